"""MARS (Yuan et al. 2024): variance-reduced AdamW and Lion, and their default plan."""

from __future__ import annotations

from orthoptim.recipes.options import default
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms import AddWeightDecay, Chain, ScaleByAdam, chain
from orthoptim.transforms.sign import LionSign
from orthoptim.transforms.variance import FirstStep, MarsCorrection, MarsVariant

MARS_ADAMW = AdamWRoute(
    lr_scale=1.0, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, roles=("vector",)
)
"""The reference's split (``optimize_1d=False``): MARS for every matrix (hidden, embedding,
head), AdamW with betas (0.9, 0.95) and weight decay 0.1 for vectors (biases, norm gains), at its
absolute lr_1d = 3e-3: the registry lr of mars_adamw (scale 1). Conv kernels get MARS (the
reference sends only 2-D tensors to MARS). With ``variant="exact"`` the AdamW route records its
previous point too (``recipes.plan.with_adamw``)."""
MARS_LION_ADAMW = AdamWRoute(
    lr_scale=10.0, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, roles=("vector",)
)
"""As ``MARS_ADAMW``, at 10 x mars_lion's lr 3e-4: the reference's lr_1d = 3e-3."""


def mars_adamw(
    *,
    gamma: float = default(MarsCorrection, "gamma"),
    betas: tuple[float, float] = (0.95, 0.99),
    eps: float = default(ScaleByAdam, "eps"),
    clip: float | None = default(MarsCorrection, "clip"),
    variant: MarsVariant = default(MarsCorrection, "variant"),
    first_step: FirstStep = default(MarsCorrection, "first_step"),
) -> Chain:
    """MARS-AdamW (Yuan et al., arXiv 2411.10438): AdamW on the clipped, corrected gradient.

    Chain: ``c <- g + gamma b1/(1-b1) (g - g_prev)``; ``c <- c / max(1, ||c||_F / clip)``; Adam's
    bias-corrected direction of ``c`` (both moments from ``c``); ``u <- u + lambda theta``.
    ``variant="exact"`` takes ``g_prev`` at the previous parameters on the current batch and
    needs ``step(closure)`` (two gradient evaluations per step).

    Differences from the reference (AGI-Arena/MARS@4831e28 MARS/optimizers/mars.py,
    ``mars_type="mars-adamw"``): ``g_prev`` is a copy (the reference keeps a reference to
    ``p.grad``, so ``zero_grad(set_to_none=False)`` silently cancels the correction); the exact
    variant evaluates the closure at the previous parameters (the reference needs the NEXT batch
    one step early); the clip has no host sync; which parameters get AdamW is the plan's business
    (``mars_plan``), not an ``optimize_1d`` flag; decay is ``u + lambda theta`` with the update,
    equal to the reference's ``-lr (lambda p + u)``. ``clip`` and ``first_step="uncorrected"``
    (the paper's ``x_1 = x_0``) are not in the reference. As in the reference code, Adam's
    second moment is the EMA of ``c^2`` (the paper and README write the raw gradient's square;
    not offered). The registry's ``Spec.needs_closure`` describes the default (approximate)
    variant; with ``variant="exact"``, ``step()`` without a closure raises before any change.

    References: arXiv 2411.10438; AGI-Arena/MARS@4831e28 MARS/optimizers/mars.py.
    """
    adam = ScaleByAdam(betas=betas, eps=eps)  # checks betas before betas[0] is used
    correction = MarsCorrection(
        gamma=gamma, beta1=betas[0], clip=clip, variant=variant, first_step=first_step
    )
    return chain(correction, adam, AddWeightDecay())


def mars_lion(
    *,
    gamma: float = default(MarsCorrection, "gamma"),
    betas: tuple[float, float] = (0.95, 0.95),
    clip: float | None = default(MarsCorrection, "clip"),
    variant: MarsVariant = default(MarsCorrection, "variant"),
    first_step: FirstStep = default(MarsCorrection, "first_step"),
) -> Chain:
    """MARS-Lion (Yuan et al., arXiv 2411.10438): Lion's sign update on the corrected gradient.

    Chain: ``c`` as in ``mars_adamw`` with ``b = betas[1]``; ``u <- sign(b1 m + (1-b1) c)``,
    ``m <- b2 m + (1-b2) c``; ``u <- u + lambda theta``. With ``gamma=0`` and ``clip=None`` this
    is Lion (Chen et al., arXiv 2302.06675) with ``betas``.

    Differences from the reference (AGI-Arena/MARS@4831e28 MARS/optimizers/mars.py,
    ``mars_type="mars-lion"``): the reference takes ``sign(m)`` of the EMA ``m`` of ``c`` with
    ``betas[0]`` (its ``betas[1]`` unused), which is our default ``betas=(0.95, 0.95)``; other
    betas give Lion's interpolated sign, and the correction uses ``betas[1]``, the momentum's
    EMA coefficient (not in the reference). Otherwise as ``mars_adamw``. The reference tunes no
    lr for MARS-Lion; ours (3e-4) is MARS-AdamW's over 10, as the Lion paper advises for AdamW.

    References: arXiv 2411.10438; AGI-Arena/MARS@4831e28 MARS/optimizers/mars.py.
    """
    lion = LionSign(betas=betas)
    correction = MarsCorrection(
        gamma=gamma, beta1=betas[1], clip=clip, variant=variant, first_step=first_step
    )
    return chain(correction, lion, AddWeightDecay())
