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
    and as ROOT's ``simple_quantile``, computed with ``kthvalue`` so that it has no size limit;
    in float32 for 16-bit inputs. (ROOT holds the position in a float32 tensor, which rounds it
    to an integer above 2^24 elements; here it is exact.)
    """
    flat = x.detach().abs().flatten().to(stats_dtype(x))
    if flat.numel() == 0:
        return flat.new_zeros(())
    position = q * (flat.numel() - 1)
    lower = int(position)
    low = flat.kthvalue(lower + 1).values
    if lower == position:
        return low
    high = flat.kthvalue(lower + 2).values
    return torch.lerp(low, high, position - lower)


def soft_threshold(x: Tensor, tau: Tensor | float) -> Tensor:
    """``sign(x) max(|x| - tau, 0)``, the proximal operator of ``tau ||.||_1`` (a new tensor)."""
    return torch.sign(x) * torch.relu(x.abs() - tau)


def dual_norm(x: Tensor, norm: str) -> Tensor:
    """The dual norm of ``x`` (a 0-d tensor in ``stats_dtype``), of its matrix view for ndim > 2.

    ``"nuclear"``: sum of singular values, exact (``torch.linalg.svdvals``); the dual of the
    spectral norm, whose LMO Muon uses. ``"frobenius"``: self-dual. ``"l1"``: the dual of the
    max-norm (sign-type LMOs).
    """
    y = x.detach().to(stats_dtype(x))
    if norm == "nuclear":
        return torch.linalg.svdvals(matrix_view(y)).sum()
    if norm == "frobenius":
        return torch.linalg.vector_norm(y)
    if norm == "l1":
        return y.abs().sum()
    raise ValueError(f"dual norm must be one of {DUAL_NORMS}, got {norm!r}")
