"""Who computes which matrix step: the chain split and the load balancer."""

from __future__ import annotations

import inspect
import re
from collections.abc import Hashable, Sequence
from functools import cache

from orthoptim.transforms.chain import Chain


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
