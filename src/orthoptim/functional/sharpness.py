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


def _ascent(
    grads: Sequence[Tensor], params: Sequence[Tensor], radius: float, adaptive: bool, eps: float
) -> tuple[Tensor, list[Tensor]]:
    """``(radius / (||T g|| + eps), T^2 g)``: the scale and the direction of the step."""
    if adaptive:
        norm = global_norm(grads, [p.abs() for p in params])
        directions = [g * (p * p) for g, p in zip(grads, params, strict=True)]
    else:
        norm = global_norm(grads)
        directions = list(grads)
    return radius / (norm + eps), directions


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
    scale, directions = _ascent(grads, params, radius, adaptive, eps)
    return [d * scale.to(d) for d in directions]  # its dtype and device (model parallel)


def perturbed(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    radius: float,
    adaptive: bool,
    eps: float,
) -> list[Tensor]:
    """``params + perturbation(grads, params, ...)``, one fused multiply-add per tensor."""
    scale, directions = _ascent(grads, params, radius, adaptive, eps)
    return [
        torch.addcmul(p.detach(), d.to(p.dtype), scale.to(p))
        for p, d in zip(params, directions, strict=True)
    ]


def shifted(params: Sequence[Tensor], steps: Sequence[Tensor], scale: float = 1.0) -> list[Tensor]:
    """``params + scale * steps``, each in its parameter's dtype."""
    return [
        torch.add(p.detach(), s.to(p.dtype), alpha=scale)
        for p, s in zip(params, steps, strict=True)
    ]


def _projection(h: Sequence[Tensor], onto: Sequence[Tensor], eps: float) -> Tensor:
    """``c`` of ``h = c onto + perp``, as GSAM and GAM's code write it: ``cos(h, onto) ||h|| /
    (||onto|| + eps)`` with ``cos = <h, onto> / (||h|| ||onto|| + eps)``, from three dot
    products per tensor (float32 for 16-bit tensors). Where a norm overflows (float32 gradients
    beyond ~1.8e19) ``inf / inf`` is NaN: ``c`` is then 0, so the estimate stays finite for
    finite gradients and the shell's check names the overflowing gradient; NaN gradients still
    give a NaN estimate (through ``h`` and ``onto`` themselves)."""
    device = h[0].device
    dtype = _norm_dtype(h[0])
    sums: list[list[Tensor]] = [[], [], []]  # <h, onto>, ||h||^2, ||onto||^2
    for a, b in zip(h, onto, strict=True):
        x, y = a.reshape(-1).to(dtype), b.reshape(-1).to(dtype)  # views for float32/64
        for out, (u, v) in zip(sums, ((x, y), (x, x), (y, y)), strict=True):
            out.append(torch.dot(u, v).to(device))
    inner, norm_h, norm_onto = (torch.stack(t).sum() for t in sums)
    norm_h, norm_onto = norm_h.sqrt(), norm_onto.sqrt()
    c = inner / (norm_h * norm_onto + eps) * norm_h / (norm_onto + eps)
    return torch.where(torch.isnan(c) & torch.isinf(norm_h * norm_onto), 0.0, c)


def orthogonal_part(h: Sequence[Tensor], onto: Sequence[Tensor], eps: float) -> list[Tensor]:
    """The part of ``h`` orthogonal to ``onto`` (both over all tensors together),
    ``h - c onto`` (``_projection``)."""
    c = _projection(h, onto, eps)
    return [a - c.to(a) * b for a, b in zip(h, onto, strict=True)]


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
    overwrite: bool = False,
) -> list[Tensor]:
    """Accelerated GAM's direction (Zhang et al. 2023, Algorithm 2, lines 13-16):
    ``h+ = alpha g1 + (1 - alpha) g3``, ``h- = beta g0 + (1 - beta) g2``, then
    ``h+ - gamma (h-)_perp``, ``(h-)_perp = h- - c h+`` the part of ``h-`` orthogonal to
    ``h+``: written ``(1 + gamma c) h+ - gamma h-``. ``overwrite``: ``h+`` and the result are
    built in ``g3``'s tensors and ``h-`` in ``g2``'s (the caller's own copies; no new ones)."""
    if overwrite:
        h_plus = [b.lerp_(a, alpha) for a, b in zip(g1, g3, strict=True)]
        h_minus = [b.lerp_(a, beta) for a, b in zip(g0, g2, strict=True)]
    else:
        h_plus = [torch.lerp(b, a, alpha) for a, b in zip(g1, g3, strict=True)]
        h_minus = [torch.lerp(b, a, beta) for a, b in zip(g0, g2, strict=True)]
    keep = 1.0 + gamma * _projection(h_minus, h_plus, eps)
    return [p.mul_(keep.to(p)).add_(m, alpha=-gamma) for p, m in zip(h_plus, h_minus, strict=True)]


def fd_gradreg_gradient(
    grads: Sequence[Tensor], shifted_grads: Sequence[Tensor], gamma: float, step: float
) -> list[Tensor]:
    """The gradient of ``L + (gamma / 2) ||grad L||^2`` by a finite difference (Karakida et al.
    2023): ``g + gamma (grad L(w + step g) - g) / step``, i.e.
    ``(1 - gamma / step) g + (gamma / step) grad L(w + step g)``. ``step > 0``: the forward
    difference (an ascent step, F-GR); ``step < 0``: the backward one (a descent step, B-GR)."""
    ratio = gamma / step
    return [torch.lerp(g, s, ratio) for g, s in zip(grads, shifted_grads, strict=True)]
