"""How the race picks an lr from its sweep; shared by the race and the report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def final_value(record: Mapping[str, Any], metric: str) -> float:
    """``record``'s final ``metric`` (``inf`` for diverged or failed runs: they rank last)."""
    value = record["final"].get(metric)
    if record["diverged"] or record.get("error") or value is None:
        return math.inf
    return float(value)


def pick(sweep: Sequence[Mapping[str, Any]], metric: str) -> Mapping[str, Any]:
    """The sweep run with the lowest final ``metric``; ties go to the factor nearest 1 (then the
    AdamW route's factor nearest 1, in a two-axis sweep)."""
    if not sweep:
        raise ValueError("no sweep runs to pick from")
    return min(
        sweep,
        key=lambda r: (
            final_value(r, metric),
            abs(math.log(r["lr_factor"])),
            abs(math.log(r.get("adamw_lr_factor") or 1.0)),
        ),
    )


def same_point(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two runs used the same lr and AdamW-route factors (seeds of one pick)."""
    return math.isclose(a["lr_factor"], b["lr_factor"]) and a.get("adamw_lr_factor") == b.get(
        "adamw_lr_factor"
    )
