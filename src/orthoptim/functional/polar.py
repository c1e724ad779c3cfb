"""Polar factors of matrices: Newton-Schulz iterations, the exact SVD factor, matrix views.

The polar factor of ``G = U S V^T`` is ``U V^T``. Newton-Schulz methods approximate it with only
matrix products by applying an odd polynomial to the singular values, several times; see
``functional.coefficients`` for the named schedules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

PreNorm = Literal["frobenius", "frobenius_clamp"]
PRE_NORMS: tuple[str, ...] = get_args(PreNorm)


def matrix_view(x: Tensor) -> Tensor:
    """``x`` as a matrix: 2-D as is, conv kernels ``(out, in, kh, kw)`` as ``(out, in*kh*kw)``.

    Returns a view whenever ``x`` is contiguous, so writes go through to ``x``.
    """
    if x.ndim < 2:
        raise ValueError(f"matrix_view needs a tensor with ndim >= 2, got shape {tuple(x.shape)}")
    return x if x.ndim == 2 else x.reshape(x.shape[0], -1)


def newton_schulz(
    x: Tensor,
    schedule: Sequence[tuple[float, float, float]],
    *,
    norm_safety: float = 1.0,
    eps: float = 1e-7,
    pre_norm: PreNorm = "frobenius",
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Approximate polar factor of each matrix in ``x`` (shape ``(..., m, n)``).

    The input is cast to ``compute_dtype`` (default: its own dtype), scaled so that its spectral
    norm is at most 1, then each ``(a, b, c)`` of ``schedule`` maps ``X <- a X + (b A + c A^2) X``
    with ``A = X X^T``; a tall matrix (``m > n``) iterates on the right instead,
    ``X <- a X + X (b A + c A^2)`` with ``A = X^T X`` (the same polynomial), so ``A`` has the
    smaller size and the result stays row-major: transposing it as the references do makes the
    later copy into the update a strided one (its cost: benchmarks/records/2026-11-25_step-speed-2).

    Pre-normalisation, ``pre_norm``:
      ``"frobenius"``: ``X / (norm_safety * ||X||_F + eps)`` (KellerJordan/Muon, Polar Express).
      ``"frobenius_clamp"``: ``X / max(norm_safety * ||X||_F, eps)`` (torch.optim.Muon).
    The norm is computed in ``compute_dtype``, as the references do. The result is returned in
    ``compute_dtype``; a zero matrix maps to zero.
    """
    if x.ndim < 2:
        raise ValueError(f"newton_schulz needs ndim >= 2, got shape {tuple(x.shape)}")
    if pre_norm not in PRE_NORMS:
        raise ValueError(f"pre_norm must be one of {PRE_NORMS}, got {pre_norm!r}")
    X = x.to(compute_dtype) if compute_dtype is not None else x
    tall = X.size(-2) > X.size(-1)
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    if norm_safety != 1.0:
        norm = norm * norm_safety
    X = X / (norm + eps) if pre_norm == "frobenius" else X / norm.clamp(min=eps)
    batch_shape = X.shape[:-2]
    if X.ndim > 3:
        X = X.reshape(-1, *X.shape[-2:])
    for a, b, c in schedule:
        if X.ndim == 2:
            A = X.mT @ X if tall else X @ X.mT
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, X, B.mT, beta=a) if tall else torch.addmm(X, B, X, beta=a)
        else:
            A = torch.bmm(X.mT, X) if tall else torch.bmm(X, X.mT)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, X, B.mT, beta=a) if tall else torch.baddbmm(X, B, X, beta=a)
    return X.reshape(*batch_shape, *X.shape[-2:])


def polar_svd(x: Tensor) -> Tensor:
    """The exact polar factor ``U V^T`` from a reduced SVD, computed in float64 (for tests)."""
    if x.ndim < 2:
        raise ValueError(f"polar_svd needs ndim >= 2, got shape {tuple(x.shape)}")
    U, _, Vh = torch.linalg.svd(x.to(torch.float64), full_matrices=False)
    return (U @ Vh).to(x.dtype)


SKETCH_COLUMNS = 8
"""Columns of ``polar_health``'s sketch."""


def polar_health(x: Tensor, columns: int = SKETCH_COLUMNS) -> Tensor:
    r"""How far an (approximate) polar factor is from orthogonal, on a random sketch: a float32
    tensor ``[band_min, band_max, deviation]`` for the matrix ``x`` (``(m, n)``; its short side
    is what should be orthonormal).

    With ``O`` the matrix oriented ``(m, n)``, ``m <= n``, and ``\Omega`` an ``m x k`` Gaussian
    sketch (``k = min(columns, m)``, drawn from a generator of its own with a fixed seed: the
    global random state is not touched, and the same matrix gets the same figures):

    - ``band_min`` / ``band_max``: the least and greatest ``||O^T w_j|| / ||w_j||`` over the
      sketch's columns ``w_j``. Each lies in ``[sigma_min, sigma_max]`` of ``O``, so the pair
      is a band inside the true singular-value band (narrower than it: a sketch, not an SVD);
      ``[1, 1]`` for an exact polar factor.
    - ``deviation``: ``||O O^T Omega - Omega||_F / ||Omega||_F``, an estimate of
      ``||O O^T - I||_F / sqrt(m)``, the RMS over singular values of ``|sigma_i^2 - 1|``
      (``E ||A Omega||_F^2 = k ||A||_F^2`` for Gaussian ``Omega``); 0 for an exact factor.

    Two products with the ``m x k`` sketch: ``4 m n k`` flops, against Newton-Schulz's
    ``steps (4 m^2 n + 2 m^3)``.
    """
    o = matrix_view(x).float()
    if o.shape[0] > o.shape[1]:
        o = o.mT
    k = min(columns, o.shape[0])
    generator = torch.Generator().manual_seed(o.shape[0] * 65_537 + o.shape[1])
    omega = torch.randn(o.shape[0], k, generator=generator).to(o.device)
    y = o.mT @ omega
    tiny = torch.finfo(torch.float32).tiny
    ratios = torch.linalg.vector_norm(y, dim=0) / torch.linalg.vector_norm(omega, dim=0)
    deviation = torch.linalg.vector_norm(o @ y - omega) / torch.linalg.vector_norm(omega).clamp_min(
        tiny
    )
    return torch.stack([ratios.min(), ratios.max(), deviation])
