"""Element-wise baselines: SGD and AdamW, written as chains."""

from __future__ import annotations

from orthoptim._checks import check_beta
from orthoptim.recipes.options import default
from orthoptim.transforms import AddWeightDecay, Chain, Momentum, ScaleByAdam, chain
from orthoptim.transforms.momentum import MomentumDtype


def sgd(
    *,
    momentum: float = default(Momentum, "beta"),
    nesterov: bool = True,
    momentum_dtype: MomentumDtype = default(Momentum, "dtype"),
) -> Chain:
    """SGD with heavy-ball or Nesterov momentum (Sutskever et al., ICML 2013).

    Chain: ``u <- g + lambda theta`` (L2, as torch.optim.SGD), ``m <- mu m + u``,
    ``u <- u + mu m`` (Nesterov) or ``m``.

    Differences from the reference (torch.optim.SGD, torch 2.13): none for dampening 0, the only
    setting offered; ``momentum=0`` drops the momentum buffer entirely. ``momentum_dtype=
    "float32"`` keeps the buffer of 16-bit parameters in float32 (``Momentum.dtype``; torch
    keeps it in the parameter's dtype, our default).

    References: torch.optim.SGD (torch==2.13.0).
    """
    check_beta("momentum", momentum)
    if momentum == 0:
        if nesterov:
            raise ValueError("nesterov=True needs momentum > 0 (allowed momentum: (0, 1))")
        return chain(AddWeightDecay())
    return chain(
        AddWeightDecay(),
        Momentum(beta=momentum, kind="sum", nesterov=nesterov, dtype=momentum_dtype),
    )


def adamw(
    *,
    betas: tuple[float, float] = default(ScaleByAdam, "betas"),
    eps: float = default(ScaleByAdam, "eps"),
) -> Chain:
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101).

    Chain: Adam's bias-corrected direction, then ``u <- u + lambda theta``, so the shell's step is
    ``theta <- theta (1 - lr lambda) - lr m_hat / (sqrt(v_hat) + eps)``.

    Differences from the reference (torch.optim.AdamW, torch 2.13): the decay is applied in the
    same step as the update instead of as a separate multiply first (equal to round-off); no
    ``amsgrad`` or ``maximize``.

    References: torch.optim.AdamW (torch==2.13.0).
    """
    return chain(ScaleByAdam(betas=betas, eps=eps), AddWeightDecay())
