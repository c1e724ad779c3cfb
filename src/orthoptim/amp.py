"""``torch.amp.GradScaler``'s optimizer protocol: the scaler finds the non-finite gradients, the
optimizer unscales them, once.

``ChainOptimizer`` declares ``_step_supports_amp_scaling``, so ``scaler.step(opt)`` does not
unscale the gradients itself: it checks them (unless ``scaler.unscale_(opt)`` already did),
sets ``opt.grad_scale`` (``None`` once ``unscale_`` ran) and ``opt.found_inf``, and calls
``opt.step()``, which skips the step when ``found_inf`` is set and otherwise unscales each
gradient where it is read: inside torch's fused AdamW kernel, or in place (one multi-tensor
multiply, as the scaler's own unscale) before an eager chain reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def scaler_inputs(optimizer: Any) -> tuple[Tensor | None, Tensor | None]:
    """``(grad_scale, found_inf)`` set on ``optimizer`` by ``GradScaler.step`` for this step,
    ``(None, None)`` outside a scaler."""
    return getattr(optimizer, "grad_scale", None), getattr(optimizer, "found_inf", None)


def unscale_(grads: Sequence[Tensor], grad_scale: Tensor | None) -> None:
    """Divide ``grads`` by ``grad_scale`` in place, as ``GradScaler.unscale_`` does (times its
    float32 reciprocal, computed in float64); nothing without a scale."""
    if grad_scale is None or not grads:
        return
    inverse = grad_scale.double().reciprocal().float()
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for device, tensors in by_device.items():
        torch._foreach_mul_(tensors, inverse.to(device))
