"""Helpers shared by the tests."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from orthoptim.hvp import double_backward_attention


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


def conv_classifier() -> nn.Module:
    """A seeded conv-then-dense classifier of 1 x 4 x 4 images (the hooked recipes' resume
    tests: a convolution's unfolded statistics and dense ones in one model)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8),
        nn.Tanh(), nn.Linear(8, 3),
    )  # fmt: skip


def train_conv_classifier(m: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    """``conv_classifier`` on batch ``s`` (seeded) of 8 random images for each ``s`` of
    ``steps``: cross-entropy, backward, step."""
    for s in steps:
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        step_on(opt, lambda x=x, y=y: nn.functional.cross_entropy(m(x), y))


def straight_and_resumed(
    make_model: Callable[[], nn.Module],
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    train: Callable[[nn.Module, torch.optim.Optimizer, range], None],
    split: int,
    total: int,
) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module, torch.optim.Optimizer]:
    """One model trained ``total`` steps straight, and one trained ``split`` steps, checkpointed
    (``save_and_load``), loaded into a fresh model and optimizer and trained to ``total``:
    ``(straight, straight_opt, resumed, resumed_opt)``."""
    straight = make_model()
    straight_opt = make_opt(straight)
    train(straight, straight_opt, range(total))
    first = make_model()
    first_opt = make_opt(first)
    train(first, first_opt, range(split))
    saved = save_and_load(first, first_opt)
    resumed = make_model()
    resumed.load_state_dict(saved["model"])
    resumed_opt = make_opt(resumed)
    resumed_opt.load_state_dict(saved["opt"])
    train(resumed, resumed_opt, range(split, total))
    return straight, straight_opt, resumed, resumed_opt


def step_all(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]):
    """Give each of ``params`` a copy of its gradient in ``grads``, then step ``opt``; an
    optimizer that needs a closure steps on ``linear_loss``, whose gradient they are."""
    if needs_closure(opt):
        return opt.step(closure_of(opt, linear_loss(params, grads)))
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return opt.step()


def needs_closure(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt`` (an orthoptim optimizer) steps only with a closure (``Plan.needs_closure``:
    a gradient estimator, exact MARS, Hessian-vector products)."""
    plan = getattr(opt, "plan", None)
    return plan is not None and plan.needs_closure


def closure_of(opt: torch.optim.Optimizer, compute_loss: Callable[[], torch.Tensor]):
    """The closure ``opt``'s plan asks for around ``compute_loss``: zero the gradients, compute
    the loss, and backpropagate it as the plan needs (``create_graph=True`` where it reads
    Hessian-vector products, no backward for a zeroth-order estimator)."""
    plan = opt.plan  # type: ignore[attr-defined]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        with double_backward_attention(plan.needs_graph):
            value = compute_loss()
        if plan.closure_backward:
            value.backward(create_graph=plan.needs_graph)
        return value

    return closure


def step_on(opt: torch.optim.Optimizer, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One training step on ``compute_loss()``: backward then ``step()``, or ``step(closure)``
    where the optimizer needs a closure (``closure_of``). Returns the loss."""
    if needs_closure(opt):
        return opt.step(closure_of(opt, compute_loss))
    opt.zero_grad()
    value = compute_loss()
    value.backward()
    opt.step()
    return value


def linear_loss(
    params: list[torch.Tensor], grads: list[torch.Tensor]
) -> Callable[[], torch.Tensor]:
    """``sum_i <p_i, g_i>`` in float32: its gradient is ``grads`` at every point (hand-set
    gradients for optimizers that re-evaluate the loss; its Hessian is zero, and a
    finite-difference estimate of it is exact up to round-off). A zero times ``|p|^2`` term
    gives the gradient a graph under ``backward(create_graph=True)`` (else an optimizer that
    reads Hessian-vector products would find none), and adds nothing to it."""
    fixed = [g.detach().clone() for g in grads]

    def compute() -> torch.Tensor:
        return sum(
            (
                (p.float() * g.float()).sum() + 0.0 * p.float().square().sum()
                for p, g in zip(params, fixed, strict=True)
            ),
            torch.zeros(()),
        )

    return compute
