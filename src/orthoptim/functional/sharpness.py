"""Sharpness-aware gradient estimates: SAM's and ASAM's perturbation, GAM's combination of four
gradients, finite-difference gradient regularisation. Pure tensor maths over every parameter an
estimator sees (one global norm); the estimators in ``transforms.sharpness`` evaluate the
gradients at the points these functions give.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _norm_dtype(t: Tensor) -> torch.dtype:
    """Norms of 16-bit tensors in float32; float32 and float64 in their own dtype."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def global_norm(tensors: Sequence[Tensor], scales: Sequence[Tensor] | None = None) -> Tensor:
    """``sqrt(sum_i ||s_i * t_i||^2)``, a 0-d tensor on the first tensor's device (``s_i``:
    ``scales[i]`` element-wise, or 1). Zero for no tensors is not defined: ``ValueError``."""
    if not tensors:
        raise ValueError("global_norm needs at least one tensor")
    device = tensors[0].device
    dtype = _norm_dtype(tensors[0])
    parts = []
    for i, t in enumerate(tensors):
        x = t if scales is None else t * scales[i]
        parts.append(torch.linalg.vector_norm(x.to(dtype)).to(device))
    return torch.linalg.vector_norm(torch.stack(parts))


def perturbation(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    radius: float,
    adaptive: bool,
    eps: float,
) -> list[Tensor]:
    """SAM's ascent step ``e = radius g / (||g|| + eps)`` (Foret et al. 2021), or with
    ``adaptive`` ASAM's ``e = radius T^2 g / (||T g|| + eps)``, ``T = |params|`` (Kwon et al.
    2021, element-wise operator). The norm runs over all ``grads`` together."""
    if adaptive:
        weights = [p.abs() for p in params]
        norm = global_norm(grads, weights)
    else:
        norm = global_norm(grads)
    scale = radius / (norm + eps)
    out = []
    for g, p in zip(grads, params, strict=True):
        e = g * scale.to(g)  # its dtype and device (model parallel)
        out.append(e * (p * p) if adaptive else e)
    return out


def shifted(params: Sequence[Tensor], steps: Sequence[Tensor]) -> list[Tensor]:
    """``params + steps``, each in its parameter's dtype."""
    return [p.detach() + s.to(p.dtype) for p, s in zip(params, steps, strict=True)]


def orthogonal_part(h: Sequence[Tensor], onto: Sequence[Tensor], eps: float) -> list[Tensor]:
    """The part of ``h`` orthogonal to ``onto`` (both over all tensors together), as GSAM and
    GAM's code write it: ``h - cos(h, onto) ||h|| onto / (||onto|| + eps)`` with
    ``cos = <h, onto> / (||h|| ||onto|| + eps)``. The three reductions in float64: squares of
    float32 gradients beyond ~1.8e19 overflow in float32 (then ``inf / inf`` would make the
    whole estimate NaN, where the shell should name the overflowing gradient instead)."""
    device = h[0].device
    sums: list[list[Tensor]] = [[], [], []]  # <h, onto>, ||h||^2, ||onto||^2
    for a, b in zip(h, onto, strict=True):
        a64, b64 = a.to(torch.float64), b.to(torch.float64)  # one tensor's copy at a time
        for out, (x, y) in zip(sums, ((a64, b64), (a64, a64), (b64, b64)), strict=True):
            out.append(torch.sum(x * y).to(device))
    inner, norm_h, norm_onto = (torch.stack(t).sum() for t in sums)
    norm_h, norm_onto = norm_h.sqrt(), norm_onto.sqrt()
    cosine = inner / (norm_h * norm_onto + eps)
    coefficient = cosine * norm_h / (norm_onto + eps)
    return [a - coefficient.to(a) * b for a, b in zip(h, onto, strict=True)]


def gam_direction(
    g0: Sequence[Tensor],
    g1: Sequence[Tensor],
    g2: Sequence[Tensor],
    g3: Sequence[Tensor],
    *,
    alpha: float,
    beta: float,
    gamma: float,
    eps: float,
) -> list[Tensor]:
    """Accelerated GAM's direction (Zhang et al. 2023, Algorithm 2, lines 13-16):
    ``h+ = alpha g1 + (1 - alpha) g3``, ``h- = beta g0 + (1 - beta) g2``, then
    ``h+ - gamma (h-)_perp``, ``(h-)_perp`` the part of ``h-`` orthogonal to ``h+``."""
    h_plus = [alpha * a + (1.0 - alpha) * b for a, b in zip(g1, g3, strict=True)]
    h_minus = [beta * a + (1.0 - beta) * b for a, b in zip(g0, g2, strict=True)]
    perp = orthogonal_part(h_minus, h_plus, eps)
    return [h - gamma * v for h, v in zip(h_plus, perp, strict=True)]


def fd_gradreg_gradient(
    grads: Sequence[Tensor], shifted_grads: Sequence[Tensor], gamma: float, step: float
) -> list[Tensor]:
    """The gradient of ``L + (gamma / 2) ||grad L||^2`` by a finite difference (Karakida et al.
    2023): ``g + gamma (grad L(w + step g) - g) / step``, i.e.
    ``(1 - gamma / step) g + (gamma / step) grad L(w + step g)``. ``step > 0``: the forward
    difference (an ascent step, F-GR); ``step < 0``: the backward one (a descent step, B-GR)."""
    ratio = gamma / step
    return [(1.0 - ratio) * g + ratio * s for g, s in zip(grads, shifted_grads, strict=True)]
