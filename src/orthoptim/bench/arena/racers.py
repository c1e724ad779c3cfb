"""Who races: every selected registry spec, plus the measuring helpers every racer shares.

A registry spec races through ``registry.build``, so a new ``Spec`` races automatically; specs
whose whole-model optimizer is identical (same plan ``repr``, lr and weight decay) race once.
A racer with an AdamW route (a whole-model plan) is built with that route's absolute lr, which
the race chooses (``orthoptim.bench.arena.sweep``). Peers from other libraries live in
``orthoptim.bench.arena.peers``. ``state_bytes`` and ``configuration`` work on any torch optimizer,
ours, a peer, or a ``Pair`` of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from orthoptim import registry
from orthoptim.bench.shared.memory import tensors_in
from orthoptim.bench.shared.optional import version_of
from orthoptim.optim import ChainOptimizer

BASELINE = "adamw"


class Pair:
    """Two optimizers stepped as one (a matrix optimizer and AdamW for the other parameters)."""

    def __init__(self, *optimizers: Any) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


Make = Callable[[nn.Module, float, "float | None"], Any]
"""``make(model, lr, adamw_lr)``: ``adamw_lr`` is the AdamW route's absolute lr (``None`` for
a racer without one)."""


@dataclass(frozen=True, slots=True)
class Racer:
    """One entry of the race.

    Args:
        name: the row label (a registry name, or ``library:algorithm`` for a peer).
        lr: the centre of its lr grid (the registry default of the algorithm it mirrors).
        peer: whether it is another library's implementation.
        library: ``"<distribution> <version>"``.
        mirrors: the registry name of the algorithm (its own name for a spec).
        make: ``make(model, lr, adamw_lr)`` -> an object with ``zero_grad`` and ``step`` (and
            ``state`` or ``optimizers``); raises ``ValueError`` if it cannot optimize the model.
        needs_closure: ``step`` takes a closure that re-evaluates the loss.
        closure_graph: the closure calls ``loss.backward(create_graph=True)`` (Hessian-vector
            products: ``Plan.needs_graph``).
        closure_backward: the closure calls backward at all (``False``: a zeroth-order
            estimator's closure returns the loss only, ``Plan.closure_backward``).
        adamw_lr_scale: for a racer whose optimizer is a plan with an AdamW route (embeddings,
            head, biases, norms), that route's default lr relative to ``lr`` (the family's
            published pairing; the race's ``--adamw-route ratio``); ``None`` without a route.
        tasks: the built-in tasks it races on (``Spec.race_tasks``); ``None``: every task.
            A user's own task (``orthoptim.bench.race``) races every racer it selects.
    """

    name: str
    lr: float
    peer: bool
    library: str
    mirrors: str
    make: Make
    needs_closure: bool = False
    closure_graph: bool = False
    closure_backward: bool = True
    adamw_lr_scale: float | None = None
    tasks: tuple[str, ...] | None = None

    @property
    def has_adamw_route(self) -> bool:
        return self.adamw_lr_scale is not None


def optimizers_of(opt: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside ``opt`` (itself, or the members of a ``Pair``)."""
    inner = getattr(opt, "optimizers", None)
    return [o for member in inner for o in optimizers_of(member)] if inner else [opt]


def state_bytes(opt: Any) -> int:
    """Exact bytes of every tensor in the optimizer state (each tensor counted once)."""
    seen: dict[int, int] = {}
    for o in optimizers_of(opt):
        for t in tensors_in(dict(o.state)):
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a hyperparameter value."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else f"tensor{tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def configuration(opt: Any) -> list[dict[str, Any]]:
    """The exact configuration of ``opt``: per torch optimizer its class, the plan's ``repr``
    for a ``ChainOptimizer``, and every param group's hyperparameters (not the tensors)."""
    out = []
    for o in optimizers_of(opt):
        entry: dict[str, Any] = {"class": f"{type(o).__module__}.{type(o).__qualname__}"}
        if isinstance(o, ChainOptimizer):
            entry["recipe"] = repr(o.plan)
        entry["groups"] = [
            {
                **{k: _plain(v) for k, v in g.items() if k not in ("params", "param_names")},
                "n_tensors": len(g["params"]),
                "n_elements": sum(p.numel() for p in g["params"]),
            }
            for g in o.param_groups
        ]
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------------
# registry specs
# ------------------------------------------------------------------------------------------------


def _spec_racer(name: str) -> Racer:
    spec = registry.get(name)
    plan = spec.whole_model_plan()

    def make(model: nn.Module, lr: float, adamw_lr: float | None) -> Any:
        if adamw_lr is None or spec.adamw is None:
            return registry.build(name, model, lr=lr)
        return registry.build(name, model, lr=lr, adamw_lr=adamw_lr)

    return Racer(
        name=name,
        lr=spec.lr,
        peer=False,
        library=f"orthoptim {version_of('orthoptim')}",
        mirrors=name,
        make=make,
        needs_closure=plan.needs_closure,
        closure_graph=plan.needs_graph,
        closure_backward=plan.closure_backward,
        adamw_lr_scale=None if spec.adamw is None else spec.adamw.lr_scale,
        tasks=spec.race_tasks,
    )


def spec_racers(patterns: Sequence[str] | None) -> tuple[list[Racer], dict[str, str]]:
    """Racers for the registry names matching ``patterns`` (all when ``None``), plus ``adamw``
    (the baseline of every ratio), and ``{alias: kept}`` for specs whose whole-model optimizer
    is identical to an earlier one (same plan ``repr``, lr and weight decay; raced once)."""
    chosen: list[str] = []
    for pattern in patterns or ["*"]:
        matched = registry.names(pattern)
        if not matched:
            registry.get(pattern)  # KeyError with close matches
        chosen += [n for n in matched if n not in chosen]
    if BASELINE not in chosen:
        chosen.insert(0, BASELINE)
    kept: dict[tuple[str, float, float], str] = {}
    aliases: dict[str, str] = {}
    racers = []
    for name in chosen:
        spec = registry.get(name)
        key = (repr(spec.whole_model_plan()), spec.lr, spec.weight_decay)
        if key in kept:
            aliases[name] = kept[key]
            continue
        kept[key] = name
        racers.append(_spec_racer(name))
    return racers, aliases
