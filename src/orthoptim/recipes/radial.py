"""AdamP and SGDP: Adam and SGD momentum without the radial step on scale-invariant weights."""

from __future__ import annotations

from orthoptim._checks import check_beta, check_bool
from orthoptim.functional.moments import EpsPlacement
from orthoptim.recipes.options import default
from orthoptim.transforms.adaptive import ScaleByAdam
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.momentum import Momentum, MomentumDtype
from orthoptim.transforms.radial import Dampen, ProjectRadial


def adamp(
    *,
    betas: tuple[float, float] = default(ScaleByAdam, "betas"),
    eps: float = default(ScaleByAdam, "eps"),
    eps_placement: EpsPlacement = default(ScaleByAdam, "eps_placement"),
    nesterov: bool = default(ScaleByAdam, "nesterov"),
    delta: float = default(ProjectRadial, "delta"),
    wd_ratio: float = default(ProjectRadial, "wd_ratio"),
) -> Chain:
    """AdamP (Heo et al. 2021, arXiv 2006.08217): Adam without the radial step on
    scale-invariant weights.

    Chain: Adam's bias-corrected direction (Nesterov numerator ``b1 m + (1-b1) g`` optionally);
    on a matrix or conv kernel whose channel-wise (else layer-wise) ``max |cos(g, theta)| <
    delta / sqrt(row length)``, ``u <- u - theta_n <theta_n, u>`` and the decay ratio is
    ``wd_ratio``; ``u <- u + lambda r theta``. Vectors and scale-variant weights get plain AdamW.
    Every parameter is updated, as in the reference (no plan). ``eps_placement="debiased"``
    is the reference's ``sqrt(v)/sqrt(1-b2^t) + eps``; ``"raw"`` is pytorch-optimizer 4.1.0's
    ``sqrt(v) + eps``.

    Differences from the reference (clovaai/AdamP@146287b ``adamp/adamp.py``): decay and update
    are applied in one step (equal to round-off); the cosine and projection of 16-bit parameters
    run in float32 and their moments are kept in float32.

    References: arXiv 2006.08217; clovaai/AdamP@146287bfd4b22061d84c4f7492bffbd3962ea2b1;
    pytorch-optimizer==4.1.0 ``AdamP``.
    """
    return chain(
        ScaleByAdam(betas=betas, eps=eps, eps_placement=eps_placement, nesterov=nesterov),
        ProjectRadial(delta=delta, wd_ratio=wd_ratio, eps=eps),
    )


def sgdp(
    *,
    momentum: float = default(Momentum, "beta"),
    dampening: float = default(Dampen, "dampening"),
    nesterov: bool = True,
    momentum_dtype: MomentumDtype = default(Momentum, "dtype"),
    project_buffer: bool = False,
    delta: float = default(ProjectRadial, "delta"),
    wd_ratio: float = default(ProjectRadial, "wd_ratio"),
    eps: float = default(ProjectRadial, "eps"),
) -> Chain:
    """SGDP (Heo et al. 2021, arXiv 2006.08217): SGD momentum without the radial step on
    scale-invariant weights.

    Chain: ``m <- mu m + (1-d) g``; ``u <- g + mu m`` (Nesterov) or ``m``; AdamP's projection
    and decay ratio ``r``; ``u <- u + lambda r theta / (1 - mu)`` (the reference's decay, which
    divides by ``1 - mu`` on every weight). Defaults are the reference README's
    (momentum 0.9, Nesterov); every parameter is updated (no plan). Without Nesterov the
    references disagree: clovaai's update *is* its momentum buffer, so its in-place projection
    also removes the radial part from the buffer (``project_buffer=True``), pytorch-optimizer
    4.1.0 projects a copy (``False``, the default).

    Differences from the reference (clovaai/AdamP@146287b ``adamp/sgdp.py``): ``dampening > 0``
    needs ``nesterov=False`` (torch.optim.SGD's rule; the reference would damp the buffer but
    not the look-ahead gradient); the default ``project_buffer=False`` is pytorch-optimizer's.

    References: arXiv 2006.08217; clovaai/AdamP@146287bfd4b22061d84c4f7492bffbd3962ea2b1;
    pytorch-optimizer==4.1.0 ``SGDP``.
    """
    check_beta("momentum", momentum)
    check_beta("dampening", dampening)
    check_bool("nesterov", nesterov)
    check_bool("project_buffer", project_buffer)
    if nesterov and (momentum == 0 or dampening != 0 or project_buffer):
        raise ValueError(
            f"nesterov=True needs momentum > 0, dampening 0 and project_buffer=False, got "
            f"momentum={momentum!r}, dampening={dampening!r}, project_buffer={project_buffer!r}"
        )
    damp = (Dampen(dampening=dampening),) if dampening != 0 else ()
    own_buffer = project_buffer and momentum != 0  # the projection then keeps the buffer
    heavy_ball = (
        ()
        if own_buffer or momentum == 0
        else (Momentum(beta=momentum, kind="sum", nesterov=nesterov, dtype=momentum_dtype),)
    )
    project = ProjectRadial(
        delta=delta,
        wd_ratio=wd_ratio,
        eps=eps,
        decay_scale=1 / (1 - momentum),
        buffer_momentum=momentum if own_buffer else 0.0,
    )
    return chain(*damp, *heavy_ball, project)
