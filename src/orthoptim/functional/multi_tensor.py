"""Multi-tensor (``torch._foreach_*``) helpers where torch's foreach op and its single-tensor
op round differently."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_SIXTEEN_BIT = (torch.bfloat16, torch.float16)


def mul_(tensors: Sequence[Tensor], scalars: float | Sequence[float]) -> None:
    """``t.mul_(s)`` for each tensor (one ``s`` for all, or one each), as one
    ``torch._foreach_mul_`` but for 16-bit tensors on CPU: there torch's foreach multiply
    rounds the scalar to the tensor's dtype first (``t.mul_`` computes with it in float32),
    so those are multiplied one at a time, to keep the single-tensor path's bits."""
    each = [float(scalars)] * len(tensors) if isinstance(scalars, int | float) else scalars
    alone = [t.device.type == "cpu" and t.dtype in _SIXTEEN_BIT for t in tensors]
    for t, s, single in zip(tensors, each, alone, strict=True):
        if single:
            t.mul_(s)
    rest = [i for i, single in enumerate(alone) if not single]
    if rest:
        torch._foreach_mul_([tensors[i] for i in rest], [each[i] for i in rest])
