"""Shared pieces of the ROOT / FISMO / noise-adaptive tests: fixed gradients, a convergence task."""

from __future__ import annotations

import torch
from torch import nn

import orthoptim


def teacher_student(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """A deterministic regression task: a random 32-64-64-4 tanh teacher, a fresh student.

    Built through ``orthoptim.build(name, model)``, the two 64-wide matrices are hidden (the
    matrix optimizer), the output layer is the head and the biases are vectors (AdamW).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 32, generator=g)

    def net() -> nn.Module:
        return nn.Sequential(
            nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)
        )

    teacher = net()
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1)
            )
        y = teacher(x)
    torch.manual_seed(seed)
    return x, y, net()


def train_teacher_student(name: str, steps: int, seed: int = 0) -> list[float]:
    """Full-batch MSE losses of ``orthoptim.build(name, student)`` at its registry defaults."""
    x, y, model = teacher_student(seed)
    opt = orthoptim.build(name, model)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def step_all(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]):
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()
