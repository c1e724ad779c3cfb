"""A race re-derived from its records: per task and racer, the picked lr, its seeds, spreads.

``summarize`` applies the race's own pick rule (``selection.pick``) to the sweep records, so
the report needs nothing but ``records.jsonl``: per task and racer, the seed runs at the picked
lr and the medians and spreads (min..max over seeds) of steps- and time-to-target, final metric,
optimizer-step time, state bytes and peak RSS. Ratios against AdamW pair seeds: seed ``s`` of a
racer against seed ``s`` of ``adamw``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orthoptim.bench.arena.flops import training_step_flops
from orthoptim.bench.arena.racers import BASELINE
from orthoptim.bench.arena.selection import final_value, pick, same_point

Record = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range over seeds; ``inf`` stands for "target not reached"."""

    median: float | None
    lo: float | None
    hi: float | None
    n: int  # finite values
    of: int  # values

    @staticmethod
    def of_values(values: Sequence[float | None], missing: float = math.inf) -> Spread:
        """Spread of ``values`` with ``None`` read as ``missing`` (``inf``: not reached)."""
        vals = [missing if v is None else float(v) for v in values]
        vals = [v for v in vals if not math.isnan(v)]
        if not vals:
            return Spread(None, None, None, 0, len(values))
        finite = sum(math.isfinite(v) for v in vals)
        return Spread(statistics.median(vals), min(vals), max(vals), finite, len(values))

    def show(self, fmt: str = "{:.3g}", scale: float = 1.0) -> str:
        """``median [lo-hi]``; "n/r" for not reached, with ``(k/n)`` when some seeds missed."""
        if self.median is None:
            return "-"

        def one(v: float | None) -> str:
            return "n/r" if v is None or not math.isfinite(v) else fmt.format(v * scale)

        text = one(self.median)
        if self.of > 1:
            text += f" [{one(self.lo)}-{one(self.hi)}]"
        if 0 < self.n < self.of:
            text += f" ({self.n}/{self.of})"
        return text


@dataclass(frozen=True, slots=True)
class Row:
    """One racer on one task, summarised over its seeds at the picked lr."""

    task: str
    racer: str
    peer: bool
    library: str
    mirrors: str
    lr: float
    lr_factor: float
    adamw_lr: float | None  # the AdamW route's lr (plans only)
    adamw_lr_factor: float | None  # of AdamW's pick, in a two-axis sweep
    at_edge: bool  # the picked lr is the largest or smallest of its sweep (not bracketed)
    extensions: int  # grid points added beyond the base grid (the edge rule)
    seeds: tuple[Record, ...]
    sweep: tuple[tuple[float, float | None, bool], ...]  # (factor, final select, diverged)
    steps_to_target: Spread
    time_to_target: Spread
    final_target: Spread
    final_select: Spread
    opt_step_s: float | None
    step_s: float | None
    opt_share: float | None
    state_bytes: int | None
    peak_rss_bytes: int | None
    opt_flops: float | None  # estimated optimizer FLOPs per step (orthoptim.bench.arena.flops)
    train_flops: float | None  # model fwd+bwd plus optimizer FLOPs per step
    errors: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return f"{self.racer} (peer)" if self.peer else self.racer


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(recs: Sequence[Record]) -> dict[str, list[Row]]:
    """``{task: [Row, ...]}`` in race order (tasks, then racers as they raced)."""
    out: dict[str, list[Row]] = {}
    order = list(dict.fromkeys(r["racer"] for r in recs))
    for task in dict.fromkeys(r["task"] for r in recs):
        mine = [r for r in recs if r["task"] == task]
        rows = []
        for racer in order:
            runs = [r for r in mine if r["racer"] == racer]
            sweep = [r for r in runs if r["phase"] == "sweep"]
            if not sweep:
                continue
            rows.append(_row(task, racer, runs, sweep))
        out[task] = rows
    return out


def _row(task: str, racer: str, runs: Sequence[Record], sweep: Sequence[Record]) -> Row:
    first = sweep[0]
    metric, target = first["select_metric"], first["target"]["metric"]
    chosen = pick(sweep, metric)
    factor = chosen["lr_factor"]
    seeds = [chosen] + [r for r in runs if r["phase"] == "seed" and same_point(r, chosen)]
    seeds.sort(key=lambda r: r["seed"])
    line = [r for r in sweep if r.get("adamw_lr_factor") == chosen.get("adamw_lr_factor")]
    grid = [r["lr_factor"] for r in line]
    sign = 1.0 if first["target"]["mode"] == "min" else -1.0

    def fin(r: Record, m: str) -> float | None:
        v = final_value(r, m)
        return v if math.isfinite(v) else None

    return Row(
        task=task,
        racer=racer,
        peer=first["peer"],
        library=first["library"],
        mirrors=first["mirrors"],
        lr=chosen["lr"],
        lr_factor=factor,
        adamw_lr=chosen.get("adamw_lr"),
        adamw_lr_factor=chosen.get("adamw_lr_factor"),
        at_edge=any(math.isclose(factor, g) for g in (min(grid), max(grid))),  # unbracketed
        extensions=sum(1 for r in sweep if r.get("extension")),
        seeds=tuple(seeds),
        sweep=tuple(
            (r["lr_factor"], fin(r, metric), bool(r["diverged"]))
            for r in sorted(line, key=lambda r: r["lr_factor"])
        ),
        steps_to_target=Spread.of_values([r["steps_to_target"] for r in seeds]),
        time_to_target=Spread.of_values([r["time_to_target_s"] for r in seeds]),
        final_target=Spread.of_values([fin(r, target) for r in seeds], missing=sign * math.inf),
        final_select=Spread.of_values([fin(r, metric) for r in seeds]),
        opt_step_s=_median([r["timing"]["opt_step_s_median"] for r in seeds]),
        step_s=_median([r["timing"]["step_s_median"] for r in seeds]),
        opt_share=_median([r["timing"]["opt_share"] for r in seeds]),
        state_bytes=max((r["memory"]["state_bytes"] or 0 for r in seeds), default=None),
        peak_rss_bytes=max((r["memory"]["peak_rss_bytes"] or 0 for r in seeds), default=None),
        opt_flops=(chosen.get("flops") or {}).get("optimizer_step"),
        train_flops=training_step_flops(chosen),
        errors=tuple(r["error"] for r in runs if r["error"]),
    )


def ratio(row: Row, base: Row | None, measure: str = "time") -> Spread | None:
    """``row`` over ``base`` (steps or time to target), seed by seed; ``inf`` where ``row``
    missed the target and ``base`` reached it; seeds where ``base`` missed are left out."""
    if base is None:
        return None
    key = "time_to_target_s" if measure == "time" else "steps_to_target"
    theirs = {r["seed"]: r[key] for r in base.seeds}
    values: list[float | None] = []
    for r in row.seeds:
        b = theirs.get(r["seed"])
        if b is None or b == 0:
            continue
        values.append(None if r[key] is None else r[key] / b)
    return Spread.of_values(values) if values else None


def baseline(rows: Sequence[Row], name: str = BASELINE) -> Row | None:
    return next((r for r in rows if r.racer == name), None)


def headline(summary: Mapping[str, Sequence[Row]], measure: str = "time") -> list[tuple[str, ...]]:
    """One row per racer, one column per task: its time (or steps) to target over AdamW's,
    ``median [min-max]`` over paired seeds; "-" where it did not race or AdamW never arrived."""
    order = list(dict.fromkeys(row.label for rows in summary.values() for row in rows))
    cells: dict[str, dict[str, str]] = {label: {} for label in order}
    for task, rows in summary.items():
        base = baseline(rows)
        for row in rows:
            r = ratio(row, base, measure)
            cells[row.label][task] = "-" if r is None else r.show("{:.2f}")
    return [(label, *(cells[label].get(t, "-") for t in summary)) for label in order]
