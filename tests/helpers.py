"""Helpers shared by the tests."""

from __future__ import annotations

import io
from collections.abc import Callable
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
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()


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
    """Give each of ``params`` a copy of its gradient in ``grads``, then step ``opt``."""
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()


def step_on(
    opt: torch.optim.Optimizer,
    compute: Callable[[], torch.Tensor],
    after_backward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One step on the loss ``compute()`` returns: zero, backward, ``after_backward()`` (e.g.
    poison a gradient), ``opt.step()``; through ``opt.step(closure)`` where the plan needs a
    closure (``Plan.needs_closure``: a gradient estimator such as sam's, exact MARS; every
    evaluation then runs ``after_backward``), the backward keeping its graph where the plan
    takes Hessian-vector products (``Plan.needs_graph``) and skipped where its closure returns
    the loss only (``Plan.closure_backward``)."""
    plan = getattr(opt, "plan", None)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = compute()
        if plan is None or plan.closure_backward:
            value.backward(create_graph=plan is not None and plan.needs_graph)
        if after_backward is not None:
            with torch.no_grad():
                after_backward()
        return value

    if plan is not None and plan.needs_closure:
        return opt.step(closure)
    value = closure()
    opt.step()
    return value


def step_with_grads(
    opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]
) -> None:
    """Step with exactly ``grads``: set on ``params``, or, where the plan needs a closure, as the
    gradients of ``sum <g, p>`` (the same gradient at every point; a zero quadratic term gives
    it a graph for Hessian-vector products)."""
    plan = getattr(opt, "plan", None)
    if plan is None or not plan.needs_closure:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        return
    step_on(
        opt,
        lambda: sum((g * p).sum() + 0 * (p * p).sum() for p, g in zip(params, grads, strict=True)),
    )
