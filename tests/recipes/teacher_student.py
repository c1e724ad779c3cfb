"""Small deterministic teacher-student problems for the convergence tests of the matrix
optimizers, and the loop that trains ``orthoptim.build(name, student)`` on one of them.

``ill_conditioned`` (the default; NorMuon, AuON, Hybrid-AuON, muon_polar): a tanh MLP teacher
``32 -> 32 -> 8`` on inputs whose feature scales are log-spaced from 1 down to 0.01 (condition
number 1e4 of the input covariance), learnt by a deeper student MLP ``32 -> 64 -> 64 -> 8`` from
full-batch gradients. The gradients of the hidden layers inherit the input's ill-conditioning,
which orthogonalised (or normalised) updates undo and SGD does not. The loss is the mean squared
error relative to the targets' variance, so 1.0 is "predicts the mean" and the numbers are
comparable across optimizers.

``random_teacher`` (ROOT, FISMO, the noise-adaptive Muon): a random 32-64-64-4 tanh teacher and
a fresh student of the same shape; the loss is the plain mean squared error. Built through
``orthoptim.build(name, model)``, the two 64-wide matrices are hidden (the matrix optimizer), the
output layer is the head and the biases are vectors (AdamW).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

import orthoptim

Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Problem = tuple[torch.Tensor, torch.Tensor, nn.Module, Loss]


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


def mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def ill_conditioned(seed: int = 0) -> Problem:
    """Inputs, targets, student and loss of the ill-conditioned problem (module docstring)."""
    x, y = data(seed=seed)
    return x, y, student(seed), relative_loss


def random_teacher(seed: int = 0) -> Problem:
    """Inputs, targets, student and loss of the random-teacher problem (module docstring)."""
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
    return x, y, net(), mse


def train(
    name: str,
    steps: int,
    lr: float | None = None,
    problem: Callable[[int], Problem] = ill_conditioned,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> list[float]:
    """The loss after each of ``steps`` full-batch steps of ``build(name, model, **options)``
    on ``problem``, at the registry's default lr unless ``lr`` is given."""
    x, y, model, loss_fn = problem(seed)
    opt = orthoptim.build(name, model, lr=lr, **(options or {}))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
