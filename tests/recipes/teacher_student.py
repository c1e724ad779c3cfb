"""A small deterministic problem where orthogonalised updates matter, shared by the convergence
tests of the Muon family (NorMuon, AuON, Hybrid-AuON, muon_polar).

A tanh MLP teacher ``32 -> 32 -> 8`` on inputs whose feature scales are log-spaced from 1 down
to 0.01 (condition number 1e4 of the input covariance), learnt by a deeper student MLP
``32 -> 64 -> 64 -> 8`` from full-batch gradients. The gradients of the hidden layers inherit the
input's ill-conditioning, which orthogonalised (or normalised) updates undo and SGD does not.
The loss is the mean squared error relative to the targets' variance, so 1.0 is "predicts the
mean" and the numbers are comparable across optimizers.
"""

from __future__ import annotations

import torch
from torch import nn

import orthoptim


def data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, 32)
    x = torch.randn(n, 32, generator=g) * scales
    w1 = torch.randn(32, 32, generator=g) / scales / 32**0.5  # every input direction matters
    w2 = torch.randn(32, 8, generator=g) / 32**0.5
    y = torch.tanh(x @ w1) @ w2
    return x, (y - y.mean(0)) / y.std(0)


def student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8)
    )


def relative_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y) / y.var()


def train(name: str, steps: int, lr: float | None = None) -> list[float]:
    """Relative losses after each of ``steps`` full-batch steps of ``build(name, model)``."""
    x, y = data()
    model = student()
    opt = orthoptim.build(name, model, lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = relative_loss(model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
