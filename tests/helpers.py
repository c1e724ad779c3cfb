"""Helpers shared by the tests."""

from __future__ import annotations

import torch


def fixed_grads(shape: tuple[int, ...], steps: int, dtype: torch.dtype, seed: int = 1):
    """A fixed, reproducible gradient sequence (no backprop needed)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(steps)]
