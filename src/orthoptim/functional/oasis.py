"""OASIS's maths (Jahani et al., arXiv 2109.05198): Hutchinson's estimate of the Hessian's
diagonal, its truncation, and the step size from a local Lipschitz estimate in the
preconditioner's norm. Pure functions; the transform is ``transforms.oasis.Oasis``."""

from __future__ import annotations

import torch
from torch import Tensor


def rademacher(
    shape: tuple[int, ...],
    seed: int,
    step: int,
    index: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """The Rademacher probe ``z`` (entries +-1 with probability 1/2) of parameter ``index`` at
    ``step``, from a generator on ``device`` seeded by ``(seed, step, index)``: a resumed run
    draws the same probes, and two parameters draw independent ones. Independence across
    parameters matters here: ``z_i (H z)_i`` is unbiased for ``H_ii`` only where
    ``E[z_i z_j] = 0`` for every ``j != i``, the other parameters' coordinates included (two
    same-shaped parameters with one draw would add their cross block's diagonal)."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step * 2654435761 + index * 40503) % 2**63)
    z = torch.randint(0, 2, shape, generator=generator, device=device, dtype=dtype)
    return z.mul_(2).sub_(1)


def truncated(d: Tensor, alpha: float) -> Tensor:
    """``D^_ii = max(|D_ii|, alpha)`` (the paper's eq. 7): positive definite, and no
    coordinate's step exceeds ``1 / alpha`` times its gradient."""
    return d.abs().clamp_min(alpha)


def lipschitz_step(
    eta: Tensor, theta: Tensor, dw_metric: Tensor, dg_dual: Tensor
) -> tuple[Tensor, Tensor]:
    """``(eta_k, theta_k)`` of Algorithm 1, line 4 and 6, from ``eta = eta_{k-1}``,
    ``theta = theta_{k-1}``, ``dw_metric = ||w_k - w_{k-1}||^2_{D^_k}`` and
    ``dg_dual = (||grad_k - grad_{k-1}||*_{D^_k})^2`` (squared norms, summed over whatever
    block shares one step size):

    ``eta_k = min(sqrt(1 + theta_{k-1}) eta_{k-1}, ||dw||_D / (2 ||dg||*_D))``,
    ``theta_k = eta_k / eta_{k-1}``.

    Guards, on the device (``torch.where``, no host read): a zero gradient difference gives
    no Lipschitz bound (the estimate is ``+inf``, so the growth bound decides); a zero
    parameter difference (a step of lr 0) gives no information either, where the formula's 0
    would pin every later step to 0 (``eta_{k+1} <= sqrt(1 + 0) * 0``); nor does a sum of
    squares that overflowed (its ratio would be 0 or infinite); where both bounds are
    infinite (``theta_0 = +inf`` and no bound at the first adaptive step), ``eta`` stays.
    """
    informative = (dg_dual > 0) & (dw_metric > 0) & dg_dual.isfinite() & dw_metric.isfinite()
    ratio = torch.where(informative, dw_metric / torch.where(informative, dg_dual, 1.0), 1.0)
    estimate = torch.where(informative, 0.5 * ratio.sqrt(), torch.inf)
    new = torch.minimum(torch.sqrt(1.0 + theta) * eta, estimate)
    new = torch.where(torch.isfinite(new), new, eta)
    return new, new / eta
