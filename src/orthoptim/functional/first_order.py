"""Pure maths of three first-order optimizers: Gravity's bounded force, INNA's coefficients and
the regularized minimal polynomial extrapolation that Optimistic AMSGrad predicts gradients with.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gravity_force(g: Tensor) -> Tensor:
    """Gravity's ``zeta = g / (1 + (g / m)^2)`` with ``m = 1 / max|g|`` over the whole tensor
    (Bahrami & Zadeh 2021, arXiv 2101.09192, Algorithm 1): each entry's pull is bounded by
    ``1 / (2 max|g|)``, the largest entries are damped most. Written with ``max|g|`` as a
    multiplier, so an all-zero gradient gives zeros (not ``0 / inf``); a new tensor."""
    scale = g.abs().amax()
    return g / (g * scale).square_().add_(1.0)


def gravity_beta(beta: float, step: int) -> float:
    """Gravity's step-dependent averaging weight ``(beta t + 1) / (t + 2)`` (rises towards
    ``beta``; at ``t = 0`` it is ``1/2``): its "alternative to moving average"."""
    return (beta * step + 1.0) / (step + 2.0)


def gravity_initial_velocity(
    shape: tuple[int, ...], std: float, seed: int, position: int, dtype: torch.dtype
) -> Tensor:
    """Gravity's ``v_0 ~ N(0, std^2)`` (the paper's ``std = alpha / lr``), on the CPU, drawn
    from a generator seeded by ``seed`` and the tensor's position among its route's tensors:
    the same draw on every rank and in every run, and a different one per tensor."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + position) % 2**63)
    draw = torch.randn(shape, generator=generator, dtype=torch.float64)
    return draw.mul_(std).to(dtype)


def rmpe(history: Tensor, reg: float) -> Tensor:
    """Regularized minimal polynomial extrapolation of the sequence ``history[0..r]`` (rows,
    oldest first; Scieur, d'Aspremont, Bach 2016, as Algorithm 3 of Wang et al.,
    arXiv 1903.01435, uses it to guess the next gradient).

    ``U = [x_1 - x_0, ..., x_r - x_{r-1}]``, ``z`` solves ``(U^T U + lambda I) z = 1``,
    ``c = z / (1^T z)``, and the guess is ``sum_{i<r} c_i x_i``. ``lambda`` is ``reg`` times the
    largest diagonal entry of ``U^T U`` (so the regularization is scale-free), plus ``1e-300``
    so that a sequence of equal points (``U = 0``) gives equal weights instead of ``0 / 0``.
    ``history`` is ``(r + 1, n)`` with ``r >= 1``; the Gram matrix and solve are in float64
    (an ``r x r`` system: nothing to save), the guess in ``history``'s dtype.
    """
    r = history.shape[0] - 1
    diffs = (history[1:] - history[:-1]).to(torch.float64)
    gram = diffs @ diffs.T
    # The largest diagonal entry sets the spectrum's scale without a host read (within a
    # factor r of ||U^T U||_2, Scieur et al.'s normalisation).
    ridge = gram.diagonal().amax() * reg + 1e-300
    system = gram + ridge * torch.eye(r, dtype=torch.float64, device=gram.device)
    ones = torch.ones(r, 1, dtype=torch.float64, device=gram.device)
    # solve_ex: no error check, which would wait for the device (the ridge keeps the system
    # positive definite).
    z = torch.linalg.solve_ex(system, ones).result
    c = (z / z.sum()).to(history.dtype)
    return (c.T @ history[:-1]).squeeze(0)
