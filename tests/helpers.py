"""Helpers shared by the tests."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn


def fixed_grads(shape: tuple[int, ...], steps: int, dtype: torch.dtype, seed: int = 1):
    """A fixed, reproducible gradient sequence (no backprop needed)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(steps)]


def save_and_load(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``{"model": ..., "opt": ...}`` after a round trip through ``torch.save`` and
    ``torch.load(weights_only=True)``: what a user's checkpoint gives back."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def mlp() -> nn.Module:
    """The small classifier the registry-wide tests train (seeded)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)
    )


def loss(model: nn.Module, seed: int) -> torch.Tensor:
    """Cross-entropy of ``model`` on a fixed random batch ``seed`` (inputs in its dtype)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    dtype = next(model.parameters()).dtype
    return nn.functional.cross_entropy(model(x.to(dtype)).float(), y)
