"""Who computes which matrix step: the chain split and the load balancer."""

from __future__ import annotations

import inspect
import re
from collections.abc import Hashable, Mapping, Sequence
from functools import cache
from typing import Any

from torch import Tensor

from orthoptim.recipes.plan import Plan, group_layout
from orthoptim.transforms.chain import Chain


def owned_span(chain: Chain) -> tuple[int, int]:
    """The ``(lo, hi)`` of ``chain``'s matrix core that an owner rank runs: ``Chain.core`` cut
    at ``Chain.fold_from`` (the folded tail is part of the final update, which every rank
    applies). ``lo == hi``: an element-wise chain, run on every rank."""
    lo, hi = chain.core
    return min(lo, chain.fold_from), min(hi, chain.fold_from)


def matrix_jobs(plan: Plan, groups: Sequence[Mapping[str, Any]]) -> list[tuple[float, Tensor]]:
    """``(cost, parameter)`` of every parameter of ``groups`` whose route's chain has a matrix
    core (``owned_span``), in the groups' order: what ``assign_owners`` shares out, both in the
    distributed step and in ``orthoptim.estimate`` (which needs no process group)."""
    jobs: list[tuple[float, Tensor]] = []
    for group in groups:
        chain = plan.route_named(group["route"]).chain
        lo, hi = owned_span(chain)
        if lo < hi:
            layout = group_layout(group)
            jobs += [(chain.cost(tuple(p.shape), layout), p) for p in group["params"]]
    return jobs


def assign_owners(
    costs: Sequence[float],
    world: int,
    loads: list[float] | None = None,
    kinds: Sequence[Hashable] | None = None,
) -> list[int]:
    """Longest-processing-time bin packing: the owner rank of each job, deterministic.

    Jobs go in decreasing cost to the least loaded rank (ties: lower rank), which is within 4/3
    of the optimal makespan (Graham 1969). Jobs of equal cost are taken grouped by ``kinds``
    (e.g. their shapes; ties: lower index), so each kind is spread evenly over the ranks instead
    of alternating kinds giving one rank all of one kind (two shapes of equal FLOPs are rarely
    equally fast). ``loads`` (one per rank) carries earlier assignments and is updated in place,
    so parameters added later keep every earlier owner.
    """
    loads = [0.0] * world if loads is None else loads
    kinds = [0] * len(costs) if kinds is None else kinds
    labels = {k: i for i, k in enumerate(sorted(set(kinds), key=str))}
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], labels[kinds[i]], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owners[index] = rank
        loads[rank] += costs[index]
    return owners


_READS = re.compile(r"\.(param|grad)\b")


@cache
def reads_of(kind: type) -> frozenset[str]:
    """Which of ``Ctx.param`` / ``Ctx.grad`` a transform class may read (a conservative scan of
    its source: a false positive only costs bytes, as the owner then receives the full tensor);
    both when the source cannot be read."""
    try:
        source = inspect.getsource(kind)
    except (OSError, TypeError):
        return frozenset({"param", "grad"})
    return frozenset(_READS.findall(source))


def core_reads(chain: Chain, lo: int, hi: int) -> tuple[bool, bool]:
    """Whether the matrix core ``[lo, hi)`` of ``chain`` reads the full parameter / gradient."""
    found: set[str] = set()
    for t in chain.transforms[lo:hi]:
        found |= reads_of(type(t))
    return "param" in found, "grad" in found
