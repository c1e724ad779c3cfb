"""FLOPs of one training step, for the race's loss-vs-FLOPs curves.

Two parts, recorded per run (``flops`` in a record):

* ``model_step``: matmul FLOPs of one forward and backward pass on a training batch, counted by
  torch's ``FlopCounterMode`` (mm, bmm, addmm, attention, convolutions; element-wise work is not
  counted), once after the run, outside every timed region.
* ``optimizer_step``: the estimated FLOPs of one optimizer step, ``Chain.cost`` summed over the
  parameters by their route (``Transform.cost``: Newton-Schulz products, Kronecker factors and
  roots amortised over their refresh period, one FLOP per element for element-wise work). A peer
  is charged the cost of the registry algorithm it mirrors (the same algorithm, so the same
  FLOPs up to implementation detail). A racer the registry does not know gets ``None``.

Cumulative training FLOPs at step ``s`` are ``s * (model_step + optimizer_step)``; a closure
racer (exact MARS) evaluates the model twice per step and is charged ``2 * model_step``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from orthoptim import registry
from orthoptim.bench.arena.tasks.base import Task
from orthoptim.routing import classify


def model_step_flops(task: Task, model: nn.Module, batch: Any) -> int:
    """Matmul FLOPs of one forward and backward pass of ``task``'s loss (gradients cleared
    after)."""
    with FlopCounterMode(display=False) as counter:
        task.loss(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def optimizer_step_flops(name: str, model: nn.Module) -> float | None:
    """Estimated FLOPs of one step of the registry optimizer ``name`` on ``model`` (its
    whole-model plan at default options); ``None`` for a name the registry does not know."""
    try:
        plan = registry.get(name).whole_model_plan()
    except KeyError:
        return None
    roles = classify(model) if plan.needs_roles else {}
    return sum(
        plan.route_for(roles.get(n, "hidden")).chain.cost(tuple(p.shape))
        for n, p in model.named_parameters()
        if p.requires_grad
    )


def training_step_flops(record: Any) -> float | None:
    """Model plus optimizer FLOPs of one step of a run's record (``None`` where not
    recorded)."""
    flops = record.get("flops") or {}
    model, optimizer = flops.get("model_step"), flops.get("optimizer_step")
    if model is None or optimizer is None:
        return None
    evaluations = 2 if record.get("timing", {}).get("opt_includes_gradients") else 1
    return evaluations * model + optimizer
