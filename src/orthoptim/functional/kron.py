"""Kronecker factors of a matrix gradient: accumulation, inverse roots, eigenbases (Shampoo, SOAP).

A gradient ``G`` (m x n) gives the left factor ``L ~ sum G G^T`` (m x m) and the right factor
``R ~ sum G^T G`` (n x n). Shampoo preconditions with ``L^{-1/p} G R^{-1/p}``; SOAP runs Adam in
the eigenbasis ``Q_L^T G Q_R`` of the two factors.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

FactorDtype = Literal["auto", "float32", "float64"]
FACTOR_DTYPES: tuple[str, ...] = get_args(FactorDtype)
MatmulDtype = Literal["auto", "factor", "bfloat16"]
MATMUL_DTYPES: tuple[str, ...] = get_args(MatmulDtype)
RefreshSchedule = Literal["together", "staggered"]
REFRESH_SCHEDULES: tuple[str, ...] = get_args(RefreshSchedule)


def factor_dtype(p: Tensor, choice: str) -> torch.dtype:
    """The dtype of the factors and bases: ``"auto"`` is float32 for 16-bit and float32
    parameters and float64 for float64 ones (``eigh``/``qr`` have no 16-bit kernels, and a factor
    sums squares, which overflow float16)."""
    if choice == "auto":
        return torch.float64 if p.dtype == torch.float64 else torch.float32
    return getattr(torch, choice)


def matmul_dtype(factor: torch.dtype, choice: str) -> torch.dtype:
    """The operand dtype of the per-step products: the factors' own (``"factor"``), or
    bfloat16, whose products a CPU with AMX or a GPU's tensor cores run several times faster
    than float32 ones (the products come back in bfloat16; callers cast them up); ``"auto"``:
    bfloat16 where the factors are float32 (16-bit and float32 parameters), the factors' own
    where they are float64 (a float64 run asks for precision)."""
    if choice == "auto":
        return torch.bfloat16 if factor == torch.float32 else factor
    return factor if choice == "factor" else torch.bfloat16


def refresh_due(step: int, every: int, position: int, schedule: str) -> bool:
    """Whether a parameter refreshes at ``step`` (its own counter): at the multiples of
    ``every`` (``"together"``: every parameter at the same steps), or at the steps congruent to
    ``position mod every`` (``"staggered"``: the matrices of a route spread over the period by
    their position, ``Ctx.position``, so no step pays for every refresh). Either way once per
    ``every`` steps, from the step counter and the position alone, so a resumed run refreshes
    at the same steps."""
    phase = position % every if schedule == "staggered" else 0
    return step % every == phase


def accumulate_(factor: Tensor, outer: Tensor, beta: float) -> Tensor:
    """``factor <- beta factor + (1 - beta) outer`` for ``beta < 1``, ``factor + outer`` for
    ``beta == 1`` (AdaGrad-style sum, Distributed Shampoo's ``beta2 = 1``); in place."""
    return factor.add_(outer) if beta == 1.0 else factor.lerp_(outer, 1.0 - beta)


def _finite_or_zero(a: Tensor) -> tuple[Tensor, Tensor]:
    """``(finite, a')``: whether every entry of ``a`` is finite (a 0-d bool on ``a``'s device)
    and ``a`` itself where it is, else zeros. A decomposition then always sees a finite matrix,
    and the caller selects its fallback with ``torch.where``: no host read decides anything."""
    finite = torch.isfinite(a).all()
    return finite, torch.where(finite, a, a.new_zeros(()))


def inverse_root(a: Tensor, root: float, eps: float) -> Tensor:
    """``(A + eps I)^{-1/root}`` of a symmetric PSD matrix via ``eigh``.

    Eigenvalues are clamped at 0 before ``eps`` is added: rounding can make the small ones of a
    low-rank factor slightly negative, and a negative base has no real root. A factor that holds
    Inf or NaN (a gradient too large for the factor's dtype) yields the zero matrix, so the step
    is skipped for that factor instead of spreading NaN.
    """
    finite, a = _finite_or_zero(a)
    w, v = torch.linalg.eigh(a)
    out = (v * (w.clamp_min(0.0) + eps).pow(-1.0 / root)) @ v.mT
    return torch.where(finite, out, out.new_zeros(()))


def eigenbasis(a: Tensor) -> Tensor:
    """Eigenvectors of a symmetric PSD matrix, by decreasing eigenvalue (SOAP's first basis).

    ``1e-30 I`` is added first, as nikhilvyas/SOAP does, so an all-zero factor has a definite
    (identity-like) basis; a non-finite factor gives the identity.
    """
    finite, a = _finite_or_zero(a)
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return torch.where(finite, torch.linalg.eigh(a + 1e-30 * eye)[1].flip(1), eye)


def refresh_basis(a: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """One power-iteration step plus QR from the current basis ``q`` (SOAP's refresh).

    The columns of ``q`` are sorted by their Rayleigh quotients ``diag(q^T A q)`` (estimated
    eigenvalues, decreasing) and ``Q' = qr(A q_sorted).Q``. Returns ``(Q', order)``; the caller
    re-indexes the second moment along this factor's dimension by ``order``, so each moment stays
    with the eigenvector it was measured on. A non-finite factor keeps the basis.
    """
    finite, a = _finite_or_zero(a)
    aq = a @ q
    order = torch.argsort((q * aq).sum(dim=0), descending=True)
    order = torch.where(finite, order, torch.arange(q.shape[1], device=q.device))
    # Q alone, as linalg.qr computes it (geqrf, then orgqr: equal bit for bit), without
    # linalg.qr's R (a triangular copy, ~1/8 of the QR's time at 2048 x 2048 on a CPU).
    reflectors, tau = torch.geqrf(aq.index_select(1, order))
    return torch.where(finite, torch.linalg.householder_product(reflectors, tau), q), order


def rotate(x: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """``Q_L^T X Q_R``; a ``None`` side is the identity (a dimension not preconditioned)."""
    if left is not None:
        x = left.mT @ x
    if right is not None:
        x = x @ right
    return x


def unrotate(x: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """``Q_L X Q_R^T``, the inverse of ``rotate`` for orthogonal bases."""
    if left is not None:
        x = left @ x
    if right is not None:
        x = x @ right.mT
    return x
