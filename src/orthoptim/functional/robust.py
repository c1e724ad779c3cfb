"""Robust statistics of updates: quantiles of magnitudes, soft-thresholding, dual norms."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from orthoptim.functional.moments import stats_dtype
from orthoptim.functional.polar import matrix_view

DualNorm = Literal["nuclear", "frobenius", "l1"]
DUAL_NORMS: tuple[str, ...] = get_args(DualNorm)


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


def soft_threshold(x: Tensor, tau: Tensor | float) -> Tensor:
    """``sign(x) max(|x| - tau, 0)``, the proximal operator of ``tau ||.||_1`` (a new tensor)."""
    return torch.sign(x) * torch.relu(x.abs() - tau)


def dual_norm(x: Tensor, norm: str) -> Tensor:
    """The dual norm of ``x`` (a 0-d tensor in ``stats_dtype``), of its matrix view for ndim > 2.

    ``"nuclear"``: sum of singular values, the dual of the spectral norm, whose LMO Muon uses;
    exact up to rounding. For float32 (and 16-bit) input: the square roots of the eigenvalues
    of the smaller Gram matrix ``X^T X`` (or ``X X^T``), formed and decomposed in float64, where
    rounding stays near ``1e-8 sigma_max`` per singular value even for low-rank ``X``: more
    accurate than float32 ``svdvals`` and cheaper
    (benchmarks/records/2026-12-06_step-speed-5); float64 input keeps ``svdvals``, which the
    Gram matrix could not beat. ``"frobenius"``: self-dual. ``"l1"``: the dual of the max-norm
    (sign-type LMOs).
    """
    y = x.detach().to(stats_dtype(x))
    if norm == "nuclear":
        m = matrix_view(y)
        if m.dtype == torch.float64:
            return torch.linalg.svdvals(m).sum()
        m = m.to(torch.float64)
        gram = m.mT @ m if m.shape[0] >= m.shape[1] else m @ m.mT
        return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum().to(y.dtype)
    if norm == "frobenius":
        return torch.linalg.vector_norm(y)
    if norm == "l1":
        return y.abs().sum()
    raise ValueError(f"dual norm must be one of {DUAL_NORMS}, got {norm!r}")
