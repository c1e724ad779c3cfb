"""The metric the loss landscape induces as the graph of the loss, and its inverse in closed form.

Embedding the graph ``(theta, sqrt(xi) L(theta))`` of the loss in ``R^{n+1}`` and pulling the
Euclidean metric back onto the parameters gives ``G = I + xi g g^T`` (``g`` the gradient; Harvey
2025, arXiv 2509.03594). It is rank one plus the identity, so Sherman-Morrison inverts it in
O(n): ``G^{-1} u = u - xi (g . u) / (1 + xi ||g||^2) g``. Written with the trace ``tau =
xi ||g||^2`` and the unit gradient ``g_hat``: ``G^{-1} u = u - tau / (1 + tau) (g_hat . u)
g_hat``, and along the gradient ``G^{-1} g = g / (1 + tau)``: the gradient's direction is kept,
its length is cut where the landscape is steep (a smooth gradient clipping).

Pure functions over a list of tensors that form one metric (one parameter, or a whole model);
no state, no host reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthoptim.functional.moments import bias_correction, stats_dtype


def accumulation_dtype(xs: Sequence[Tensor]) -> torch.dtype:
    """float64 if any of ``xs`` is float64, else float32: the dtype of a sum over a model."""
    return torch.float64 if any(stats_dtype(x) == torch.float64 for x in xs) else torch.float32


def total_dot(xs: Sequence[Tensor], ys: Sequence[Tensor], device: torch.device) -> Tensor:
    """``sum_i x_i . y_i`` as a 0-d tensor on ``device`` in ``accumulation_dtype(xs)``: the
    inner product of two vectors stored in pieces (each pair flattened alike)."""
    dtype = accumulation_dtype(xs)
    parts = [
        torch.dot(x.reshape(-1).to(dtype), y.reshape(-1).to(dtype)).to(device)
        for x, y in zip(xs, ys, strict=True)
    ]
    return torch.stack(parts).sum() if parts else torch.zeros((), dtype=dtype, device=device)


def smoothed_trace(
    average: Tensor, trace: Tensor, beta: float, step: int | Tensor
) -> tuple[Tensor, Tensor]:
    """``(average', tau_hat)``: the EMA ``average' = beta average + (1 - beta) trace`` (the new
    value is written into ``average``) and its bias-corrected value ``|average'| / (1 -
    beta^step)``; ``beta = 0`` gives ``tau_hat = |trace|``, the metric at this step."""
    average.lerp_(trace.to(average.dtype), 1.0 - beta)
    return average, average.abs() / bias_correction(beta, step)


def scale_(us: Sequence[Tensor], tau: Tensor) -> list[Tensor]:
    """In place ``u <- u / (1 + tau)`` for each of ``us``: the inverse metric applied to an
    update parallel to the gradient (exact there), and the reference's rescaling of any update."""
    factor = torch.reciprocal(1.0 + tau)
    return [u.mul_(factor.to(u.dtype)) for u in us]


def sherman_morrison_(us: Sequence[Tensor], gs: Sequence[Tensor], tau: Tensor) -> list[Tensor]:
    """In place ``u <- u - tau / (1 + tau) (g . u) / ||g||^2 g`` over the pieces ``us``, ``gs``
    of one vector each: ``(I + xi g g^T)^{-1} u`` for ``tau = xi ||g||^2`` (Sherman-Morrison),
    only the component of ``u`` along ``g`` shrunk. A zero gradient leaves ``u`` unchanged
    (``g . u = 0`` over a clamped ``||g||^2``, no branch on the value)."""
    if not us:
        return []
    device = us[0].device
    along = total_dot(gs, us, device)
    norm2 = total_dot(gs, gs, device)
    tiny = torch.finfo(norm2.dtype).tiny
    coef = (tau.to(norm2.dtype) / (1.0 + tau.to(norm2.dtype))) * along / norm2.clamp_min(tiny)
    return [u.sub_(g.to(u.dtype) * coef.to(u.device, u.dtype)) for u, g in zip(us, gs, strict=True)]
