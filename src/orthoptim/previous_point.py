"""The second gradient evaluation of a step: the gradients at the parameters' previous values on
the current batch, for chains with a ``previous_point`` (exact MARS), read as
``Ctx.grad_at_previous``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from orthoptim.groups import names_of
from orthoptim.nonfinite import NonFiniteGradientError, NonFinitePolicy, all_finite
from orthoptim.recipes.plan import Plan


def grads_at_previous_points(
    state: Mapping[Tensor, Mapping[str, Tensor]],
    param_groups: Sequence[Mapping[str, Any]],
    plan: Plan,
    closure: Callable[[], Any] | None,
    nonfinite: NonFinitePolicy,
) -> dict[Tensor, Tensor]:
    """One extra ``closure()`` with the parameters of those routes set to their chain's
    ``previous_point`` buffer, restored after (also on error); ``{}`` where no route has one
    or no parameter has stepped yet. ``ValueError`` without a closure, before anything
    changes; the closure must zero the gradients itself (as for ``torch.optim.LBFGS``). With
    ``nonfinite="raise"``, ``NonFiniteGradientError`` for a non-finite gradient found there."""
    points: list[tuple[str, Tensor, Tensor]] = []
    for group in param_groups:
        key = plan.route_named(group["route"]).chain.previous_point
        if key is None:
            continue
        if closure is None:
            raise ValueError(
                f"route {group['route']!r} needs the gradient at the previous parameters "
                f"({key.split('.')[0]}, e.g. MARS variant='exact'): call step(closure) "
                "with a closure that zeroes the gradients, computes the loss and calls "
                "backward()"
            )
        for name, p in zip(names_of(group), group["params"], strict=True):
            if key in state.get(p, {}):
                points.append((name, p, state[p][key]))
    if not points or closure is None:
        return {}
    current = [p.detach().clone() for _, p, _ in points]
    try:
        for _, p, previous in points:
            p.copy_(previous)
        with torch.enable_grad():
            closure()
        at_previous = {
            p: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for _, p, _ in points
        }
    finally:
        for (_, p, _), value in zip(points, current, strict=True):
            p.copy_(value)
    if nonfinite == "raise" and not all_finite(list(at_previous.values())):
        name = next(n or "<unnamed>" for n, p, _ in points if not all_finite([at_previous[p]]))
        raise NonFiniteGradientError(
            f"gradient of parameter {name} at its previous value holds NaN, Inf, or a value "
            "whose square overflows; nothing was updated (pass nonfinite='skip' to skip such "
            "steps instead)"
        )
    return at_previous
