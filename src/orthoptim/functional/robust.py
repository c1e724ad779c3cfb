"""Robust statistics of updates: quantiles of magnitudes, soft-thresholding, dual norms."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, get_args

import torch
from torch import Tensor

from orthoptim.functional.moments import stats_dtype
from orthoptim.functional.polar import matrix_view

DualNorm = Literal["nuclear", "frobenius", "l1"]
DUAL_NORMS: tuple[str, ...] = get_args(DualNorm)
NuclearNorm = Literal["exact", "gram"]
NUCLEAR_NORMS: tuple[str, ...] = get_args(NuclearNorm)


def abs_quantile(x: Tensor, q: float) -> Tensor:
    """The ``q``-quantile of ``|x|`` (a 0-d tensor), linear interpolation between order statistics.

    Same definition as ``torch.quantile(|x|, q)`` (position ``q (N - 1)`` in the sorted values)
    and as ROOT's ``simple_quantile``, without ``torch.quantile``'s size limit; in float32 for
    16-bit inputs. (ROOT holds the position in a float32 tensor, which rounds it to an integer
    above 2^24 elements; here it is exact.) The one or two order statistics come from one
    unsorted ``topk`` of the shorter tail (10% of the entries for ROOT's 0.9), then the ends
    of that tail: exact, and a third of the time of two ``kthvalue`` selections over every entry.
    """
    flat = x.detach().abs().flatten().to(stats_dtype(x))
    n = flat.numel()
    if n == 0:
        return flat.new_zeros(())
    position = q * (n - 1)
    lower = int(position)
    both = lower != position  # the order statistics lower and lower + 1, else lower alone
    if lower + 1 <= n - lower:  # the smallest lower + 1 (+ 1) entries, their largest at the end
        tail = flat.topk(lower + 1 + both, largest=False, sorted=False).values
        ends = tail.topk(1 + both).values
        low, high = ends[-1], ends[0]
    else:  # the largest n - lower entries, their smallest first
        tail = flat.topk(n - lower, sorted=False).values
        ends = tail.topk(1 + both, largest=False).values
        low, high = ends[0], ends[-1]
    return torch.lerp(low, high, position - lower) if both else low


# The golden-ratio fraction of 2^64: consecutive steps' offsets ``step * _STRIDE mod n`` are
# spread evenly over the entries (Weyl sequence), so no two nearby steps reuse a sample.
_STRIDE = 0x9E3779B97F4A7C15
_SAMPLE_SEED = 0x5A3D_2C1F


@lru_cache(maxsize=64)
def _sample_base(n: int, k: int, device: torch.device) -> Tensor:
    """``k`` indices drawn uniformly with replacement from ``range(n)``, from a generator seeded
    by a constant and ``n`` alone (so every run, process and rank draws the same), on
    ``device``. Cached: one host-to-device copy per (size, device), none per step."""
    g = torch.Generator().manual_seed(_SAMPLE_SEED ^ n)
    return torch.randint(n, (k,), generator=g, dtype=torch.int64).to(device)


def sample_indices(n: int, k: int, step: int, device: torch.device) -> Tensor:
    """``k`` i.i.d. uniform indices into ``range(n)`` for step ``step``: a fixed uniform draw
    shifted cyclically by ``step * golden ratio * n`` (a shift of i.i.d. uniform indices mod
    ``n`` is again i.i.d. uniform, and it is chosen from the step counter alone, never from the
    data, so it is the same after a checkpoint resume). A new tensor."""
    offset = (step * _STRIDE) % n
    return _sample_base(n, k, device).add(offset).remainder_(n)


def sampled_abs_quantile(x: Tensor, q: float, k: int, step: int) -> Tensor:
    """The ``q``-quantile of ``|x|`` estimated from ``k`` entries sampled uniformly with
    replacement (``sample_indices``): ``abs_quantile`` of the sample, a 0-d tensor in float32
    for 16-bit inputs; the exact ``abs_quantile(x, q)`` when ``x`` has at most ``k`` entries.

    Error bound (Dvoretzky-Kiefer-Wolfowitz, Massart's constant): with probability at least
    ``1 - delta`` over the sample, the sample's distribution function is within
    ``eps = sqrt(ln(2 / delta) / (2 k))`` of the entries' everywhere, so the estimate lies
    between the exact ``(q - eps)`` and ``(q + eps)`` quantiles of ``|x|``
    (``dkw_epsilon``; ``k = 2^16, delta = 1e-6``: ``eps = 0.0105``). The cost is a gather of
    ``k`` entries and a selection among them, whatever the size of ``x``.
    """
    n = x.numel()
    if n <= k:
        return abs_quantile(x, q)
    sample = torch.take(x.detach(), sample_indices(n, k, step, x.device))
    return abs_quantile(sample, q)


def dkw_epsilon(k: int, delta: float) -> float:
    """The half-width ``sqrt(ln(2 / delta) / (2 k))`` of the DKW band for ``k`` samples at
    confidence ``1 - delta`` (``sampled_abs_quantile``)."""
    return math.sqrt(math.log(2.0 / delta) / (2.0 * k))


def soft_threshold(x: Tensor, tau: Tensor | float) -> Tensor:
    """``sign(x) max(|x| - tau, 0)``, the proximal operator of ``tau ||.||_1`` (a new tensor)."""
    return torch.sign(x) * torch.relu(x.abs() - tau)


def dual_norm(x: Tensor, norm: str, nuclear: NuclearNorm = "exact") -> Tensor:
    """The dual norm of ``x`` (a 0-d tensor in ``stats_dtype``), of its matrix view for ndim > 2.

    ``"nuclear"``: sum of singular values, the dual of the spectral norm, whose LMO Muon uses,
    by ``nuclear`` (``nuclear_norm``). ``"frobenius"``: self-dual. ``"l1"``: the dual of the
    max-norm (sign-type LMOs).
    """
    y = x.detach().to(stats_dtype(x))
    if norm == "nuclear":
        return nuclear_norm(matrix_view(y), nuclear)
    if norm == "frobenius":
        return torch.linalg.vector_norm(y)
    if norm == "l1":
        return y.abs().sum()
    raise ValueError(f"dual norm must be one of {DUAL_NORMS}, got {norm!r}")


def nuclear_norm(m: Tensor, method: NuclearNorm = "exact") -> Tensor:
    """The sum of the singular values of the matrix ``m``, a 0-d tensor of ``m``'s dtype.

    Both methods take the square roots of the eigenvalues (clamped at 0) of the smaller Gram
    matrix ``M^T M`` (or ``M M^T``); ``"exact"``: formed and decomposed in float64 (float64
    input: ``svdvals``, which the Gram matrix could not beat), exact up to rounding: about
    ``1e-8 sigma_max`` per singular value even for low-rank ``M``, more accurate than float32
    ``svdvals`` and cheaper (benchmarks/records/2026-12-06_step-speed-5). ``"gram"``: formed and
    decomposed in ``m``'s own dtype: a ``muon_nalr`` step on the default 24 float32 matrices
    takes 0.64x the time of one with ``"exact"``. Squaring loses half the digits: each float32
    eigenvalue carries rounding of about ``1e-9 sigma_max^2``, whose root (about ``3e-5
    sigma_max``) is added for every zero singular value, so the relative error grows as the
    rank falls. Measured against ``"exact"``
    (benchmarks/nalr_adamw_speed): Gaussian 2048 x 512, 512 x 2048,
    512 x 512: <= 2e-7; rank 1 / 4 / 32 / 256: 1.5e-2 / 1.1e-2 / 3.1e-3 / 4.2e-4; rank 4 plus
    1e-1 to 1e-3 relative full-rank noise: <= 2.9e-3.
    """
    if method not in NUCLEAR_NORMS:
        raise ValueError(f"nuclear_norm must be one of {NUCLEAR_NORMS}, got {method!r}")
    if method == "exact":
        if m.dtype == torch.float64:
            return torch.linalg.svdvals(m).sum()
        g = m.to(torch.float64)
    else:
        g = m
    gram = g.mT @ g if g.shape[0] >= g.shape[1] else g @ g.mT
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum().to(m.dtype)
