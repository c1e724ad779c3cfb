"""Shared pieces of the distributed step: per-parameter work items, running a range of a
chain's transforms, shard rows and round order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from orthoptim.distributed.owners import owned_span
from orthoptim.eager import descend_
from orthoptim.functional.layout import DEFAULT_LAYOUT
from orthoptim.recipes.plan import Plan
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.chain import Chain

Layout = Literal["replicated", "sharded"]


class UnsupportedLayoutError(ValueError):
    """The parameters' mesh or placement is one the distributed step does not support."""


@dataclass(eq=False)
class Item:
    """One parameter's share of a step."""

    name: str
    p: Tensor
    state: MutableMapping[str, Tensor]
    ctx: Ctx
    u: Tensor
    owner: int


@dataclass
class Job:
    """One param group's parameters with a gradient, and its chain split."""

    chain: Chain
    lr: float
    lo: int
    hi: int
    layout: str = DEFAULT_LAYOUT
    items: list[Item] = field(default_factory=list)


class ByParam:
    """A job whose items are looked up by ``id(p)``."""

    def __init__(self, job: Job) -> None:
        self.chain, self.lo, self.lr = job.chain, job.lo, job.lr
        self.items = {id(it.p): it for it in job.items}


class LocalState(MutableMapping[str, Tensor]):
    """A parameter's state seen through its local shards: DTensor buffers read as their local
    tensor (same storage, so in-place updates land in the DTensor), plain tensors written over a
    DTensor buffer are wrapped back into one."""

    __slots__ = ("_state",)

    def __init__(self, state: MutableMapping[str, Tensor]) -> None:
        self._state = state

    def __getitem__(self, key: str) -> Tensor:
        value = self._state[key]
        return value.to_local() if isinstance(value, DTensor) else value

    def __setitem__(self, key: str, value: Tensor) -> None:
        old = self._state.get(key)
        if isinstance(old, DTensor) and not isinstance(value, DTensor):
            value = DTensor.from_local(
                value,
                old.device_mesh,
                old.placements,
                run_check=False,
                shape=old.shape,
                stride=old.stride(),
            )
        self._state[key] = value

    def __delitem__(self, key: str) -> None:
        del self._state[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def run_range(chain: Chain, lo: int, hi: int, items: Sequence[Item], local: bool) -> None:
    """Transforms ``[lo, hi)`` of ``chain`` over ``items``, transform-major, updating ``u``
    (``Chain.apply_range``: the matrix core in ``(out, in)`` order)."""
    if lo == hi or not items:
        return
    states = [LocalState(it.state) if local else it.state for it in items]
    us = chain.apply_range(lo, hi, [it.u for it in items], states, [it.ctx for it in items])
    for it, u in zip(items, us, strict=True):
        it.u = u


def update_params(chain: Chain, items: Sequence[Item], lr: float, local: bool) -> None:
    """``theta <- theta - lr u`` for each item, transforms ``[fold_from, n)`` folded in as in
    one process (``eager.descend_``); on the local shards with ``local``, the fold's numbers
    (a shape scale) read from the whole parameter's shape."""
    for it in items:
        ctx = dataclasses.replace(it.ctx, param=it.p) if local else it.ctx
        descend_(local_tensor(it.p) if local else it.p, it.u, lr, *chain.folded(ctx))


def local_tensor(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor; any other tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def shard_rows(n: int, world: int) -> list[int]:
    """Rows of each rank's ``Shard(0)`` piece of ``n`` rows (``torch.chunk``, as FSDP2)."""
    size = -(-n // world) if n else 0
    return [max(0, min(n, (r + 1) * size) - r * size) for r in range(world)]


def rounds_of(buckets: Mapping[Any, list[Any]]) -> list[tuple[Any, list[Any]]]:
    """A rank's buckets in round order, largest first, so the last round, whose transfer no
    compute hides, is the smallest. Every rank orders every rank's buckets by this rule, so
    round ``k`` pairs like buckets (the load balancer gives each rank a like mix of shapes)."""

    def size(members: list[Any]) -> int:
        return sum((m.p if isinstance(m, Item) else m[1]).numel() for m in members)

    return sorted(buckets.items(), key=lambda kv: (-size(kv[1]), str(kv[0])))


def split_rows(t: Tensor, world: int) -> list[Tensor]:
    """Each rank's ``Shard(0)`` rows of the full tensor ``t``."""
    rows = shard_rows(t.shape[0], world)
    return list(torch.split(t, rows, 0))


class Topology:
    """What both layouts' steps read: the ranks, the owners, the plan, the byte count."""

    layout: Layout
    replicate_state: bool
    group: Any
    plan: Plan
    rank: int
    world: int
    owners: dict[int, int]
    positions: Mapping[int, tuple[int, int]]
    sent_bytes: int

    def split(self, route: str) -> tuple[Chain, int, int]:
        """The route's chain and its ``(lo, hi)`` split (``Chain.core``), both cut at
        ``Chain.fold_from``: the transforms from there on are folded into the final update
        (``update_params``), as in one process, so the owner's core stops before them."""
        chain = self.plan.route_named(route).chain
        return chain, *owned_span(chain)

    def owns(self, p: Tensor) -> bool:
        """Whether this rank computes ``p``'s matrix step (element-wise chains: every rank)."""
        return self.owners.get(id(p), self.rank) == self.rank


# torch 2.13 renamed ``all_gather_into_tensor`` (now deprecated) to ``all_gather_single``; the
# same signature, so take whichever this torch has (we support torch >= 2.9).
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
