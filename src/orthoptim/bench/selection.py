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
    """The sweep run with the lowest final ``metric``; ties go to the factor nearest 1."""
    if not sweep:
        raise ValueError("no sweep runs to pick from")
    return min(sweep, key=lambda r: (final_value(r, metric), abs(math.log(r["lr_factor"]))))
