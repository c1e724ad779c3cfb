"""``estimate``: an optimizer's state bytes and step FLOPs on a model before training, per route
and per rank, without allocating anything or running a step.

State bytes come from the transforms' own declarations: each parameter's buffers are what its
route's chain creates on the first step (``Chain.init``, as ``ChainOptimizer`` calls it), here
run on a meta tensor of the parameter's shape and dtype, so nothing is allocated and the model
itself may live on the meta device. FLOPs are the chains' ``cost`` (what the distributed load
balancer and the speed benchmark's FLOP floor weigh). Under ``world_size`` ranks of plain data
parallelism (DDP, ``orthoptim.distributed``'s replicated layout) each matrix step has one owner,
chosen by the same function as the distributed step (``owners.matrix_jobs`` and
``assign_owners``, no process group needed): the owner alone holds that parameter's buffers and
computes its matrix step, while element-wise routes (AdamW) and every parameter's ``step``
counter are held and computed on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from orthoptim._checks import check_positive_int
from orthoptim.distributed.owners import assign_owners, matrix_jobs
from orthoptim.recipes.plan import Plan, group_layout
from orthoptim.registry import build, get, single_process_reason

__all__ = ["STEP_COUNTER_BYTES", "Estimate", "RouteEstimate", "estimate"]

STEP_COUNTER_BYTES = 4
"""Each parameter's ``step`` counter: a 0-d float32 tensor (``ChainOptimizer``'s states)."""


def _nbytes(buffers: Mapping[str, Tensor]) -> int:
    return sum(b.nbytes for b in buffers.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteEstimate:
    """One route's share of an ``Estimate``.

    Args:
        name: the route's name (``Route.name``).
        parameters: how many parameters it updates.
        elements: their element count.
        state_bytes: its state with every buffer at its in-use size (``TransformBase.held``),
            step counters included, in one process: an upper bound, and the exact size for every
            transform that never releases a buffer.
        initial_state_bytes: its state as the first step creates it (``Chain.init``); below
            ``state_bytes`` only where a transform keeps buffers released while unused (FRUGAL's
            moments of its state-free blocks).
        flops: one step's FLOPs (the chains' ``cost``).
        replicated_state_bytes: what every rank holds of it under ``world_size`` ranks (the
            buffers of an element-wise chain, and every parameter's step counter).
        owned_state_bytes: per rank, what it holds besides that: the buffers of the matrix
            steps it owns. ``replicated_state_bytes + sum(owned_state_bytes) == state_bytes``.
        replicated_flops: FLOPs every rank computes (element-wise chains).
        owned_flops: per rank, the FLOPs of the matrix steps it owns.
    """

    name: str
    parameters: int
    elements: int
    state_bytes: int
    initial_state_bytes: int
    flops: float
    replicated_state_bytes: int
    owned_state_bytes: tuple[int, ...]
    replicated_flops: float
    owned_flops: tuple[float, ...]

    def rank_state_bytes(self, rank: int) -> int:
        """What rank ``rank`` holds of this route's state."""
        return self.replicated_state_bytes + self.owned_state_bytes[rank]

    def rank_flops(self, rank: int) -> float:
        """What rank ``rank`` computes of this route's step."""
        return self.replicated_flops + self.owned_flops[rank]


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """What ``estimate`` returns: totals, and ``routes`` in the plan's order."""

    name: str
    world_size: int
    routes: tuple[RouteEstimate, ...]

    @property
    def state_bytes(self) -> int:
        """Every route's state in one process, buffers at their in-use size (an upper bound;
        ``RouteEstimate.state_bytes``)."""
        return sum(r.state_bytes for r in self.routes)

    @property
    def initial_state_bytes(self) -> int:
        """Every route's state as the first step creates it."""
        return sum(r.initial_state_bytes for r in self.routes)

    @property
    def flops(self) -> float:
        """One step's FLOPs, all routes, in one process."""
        return sum(r.flops for r in self.routes)

    def rank_state_bytes(self, rank: int) -> int:
        """What rank ``rank`` holds under ``world_size`` ranks."""
        return sum(r.rank_state_bytes(rank) for r in self.routes)

    def rank_flops(self, rank: int) -> float:
        """What rank ``rank`` computes per step under ``world_size`` ranks."""
        return sum(r.rank_flops(rank) for r in self.routes)

    def __str__(self) -> str:
        rows = [("route", "params", "elements", "state", "GFLOP/step")]
        for r in self.routes:
            rows.append(
                (r.name, str(r.parameters), f"{r.elements:,}", _size(r.state_bytes), _g(r.flops))
            )
        rows.append(("total", "", "", _size(self.state_bytes), _g(self.flops)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [f"{self.name}: optimizer state and step FLOPs (before training)"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        if self.initial_state_bytes != self.state_bytes:
            lines.append(
                f"state at the first step: {_size(self.initial_state_bytes)} (buffers released "
                "while unused; the total counts them in use)"
            )
        if self.world_size > 1:
            lines.append(f"per rank under {self.world_size} ranks (DDP, owner per matrix step):")
            lines += [
                f"  rank {k}: state {_size(self.rank_state_bytes(k))}, "
                f"{_g(self.rank_flops(k))} GFLOP/step"
                for k in range(self.world_size)
            ]
        return "\n".join(line.rstrip() for line in lines)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _g(flops: float) -> str:
    return f"{flops / 1e9:.4g}"


def estimate(
    name: str,
    model: nn.Module,
    world_size: int = 1,
    options: Mapping[str, Any] | None = None,
) -> Estimate:
    """The state bytes and step FLOPs of ``orthoptim.build(name, model, **options)``, per route
    and per rank under ``world_size`` data-parallel ranks, without a step (see module doc).

    ``model`` may live on the meta device (``with torch.device("meta"): model = Net()``):
    nothing is allocated. Activations, gradients and the step's transient working copies are not
    counted: only what the optimizer keeps between steps.
    """
    check_positive_int("world_size", world_size)
    opt = build(name, model, **dict(options or {}))
    reason = single_process_reason(get(name), opt.plan) if world_size > 1 else None
    if reason is not None:
        _remove_captures(opt.plan)
        raise ValueError(f"{name} cannot run on {world_size} ranks: {reason}")
    try:
        meta: dict[int, tuple[int, int]] = {}
        for group in opt.param_groups:
            route, layout = group["route"], group_layout(group)
            for p in group["params"]:
                like = torch.empty(p.shape, dtype=p.dtype, device="meta")
                meta[id(p)] = (
                    _nbytes(opt.plan.held(route, like, layout)),
                    _nbytes(opt.plan.init(route, like, layout)),
                )
        jobs = matrix_jobs(opt.plan, opt.param_groups)
        ranks = assign_owners(
            [c for c, _ in jobs], world_size, kinds=[tuple(p.shape) for _, p in jobs]
        )
        owner = {id(p): r for (_, p), r in zip(jobs, ranks, strict=True)}
        routes = []
        for route in opt.plan.routes:
            groups = [g for g in opt.param_groups if g["route"] == route.name]
            owned_bytes, owned_flops = [0] * world_size, [0.0] * world_size
            held = initial = elements = count = replicated = 0
            flops = replicated_flops = 0.0
            for group in groups:
                for p in group["params"]:
                    buffers, first = meta[id(p)]
                    cost = route.chain.cost(tuple(p.shape), group_layout(group))
                    count, elements = count + 1, elements + p.numel()
                    held += buffers + STEP_COUNTER_BYTES
                    initial += first + STEP_COUNTER_BYTES
                    flops += cost
                    replicated += STEP_COUNTER_BYTES  # every rank counts every step
                    if id(p) in owner:
                        owned_bytes[owner[id(p)]] += buffers
                        owned_flops[owner[id(p)]] += cost
                    else:
                        replicated += buffers
                        replicated_flops += cost
            routes.append(
                RouteEstimate(
                    name=route.name,
                    parameters=count,
                    elements=elements,
                    state_bytes=held,
                    initial_state_bytes=initial,
                    flops=flops,
                    replicated_state_bytes=replicated,
                    owned_state_bytes=tuple(owned_bytes),
                    replicated_flops=replicated_flops,
                    owned_flops=tuple(owned_flops),
                )
            )
        return Estimate(name=name, world_size=world_size, routes=tuple(routes))
    finally:
        _remove_captures(opt.plan)


def _remove_captures(plan: Plan) -> None:
    """Take off the hooks ``build`` put on the model for chains that read activations."""
    for route in plan.routes:
        for t in route.chain.transforms:
            if t.needs_module:
                t.capture.remove()  # type: ignore[attr-defined]
