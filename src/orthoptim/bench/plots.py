"""PNG plots of a race, drawn from the report's summary (records only; matplotlib, Agg).

Per task: ``<task>_curves.png`` (validation metrics against step and against training
wall-clock; median over seeds with a min..max band; peers dashed; the target as a dotted line)
and ``<task>_time_to_target.png`` (median time to target with min..max whiskers, AdamW's median
marked by a vertical line; bars of racers that missed the target are labelled).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orthoptim.bench._optional import require
from orthoptim.bench.racers import BASELINE
from orthoptim.bench.summary import Row, baseline


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "the race's plots")
    matplotlib.use("Agg", force=True)
    return require("matplotlib.pyplot", "the race's plots")


def _band(seeds: Sequence[Mapping[str, Any]], metric: str, axis: str) -> tuple[list[float], ...]:
    """(x, median, lo, hi) at the evaluation points all seeds share (``axis``: step or time)."""
    curves = [[p for p in r["curve"] if p.get(metric) is not None] for r in seeds]
    curves = [c for c in curves if c]
    if not curves:
        return [], [], [], []
    n = min(len(c) for c in curves)
    key = "step" if axis == "step" else "time_s"
    xs, med, lo, hi = [], [], [], []
    for i in range(n):
        values = [c[i][metric] for c in curves]
        xs.append(statistics.median(c[i][key] for c in curves))
        med.append(statistics.median(values))
        lo.append(min(values))
        hi.append(max(values))
    return xs, med, lo, hi


def _metrics(row: Row) -> list[str]:
    first = row.seeds[0]
    names = [first["select_metric"], first["target"]["metric"]]
    return list(dict.fromkeys(names))


def curves(rows: Sequence[Row], path: Path) -> None:
    """Validation metrics vs step (left) and vs training wall-clock (right)."""
    plt = _pyplot()
    metrics = _metrics(rows[0])
    target = rows[0].seeds[0]["target"]
    fig, axes = plt.subplots(
        len(metrics), 2, figsize=(13, 3.6 * len(metrics)), squeeze=False, layout="constrained"
    )
    palette = _palette(plt, rows)
    for r_i, metric in enumerate(metrics):
        for c_i, axis in enumerate(("step", "time")):
            ax = axes[r_i][c_i]
            positive = True
            for row in rows:
                xs, med, lo, hi = _band(row.seeds, metric, axis)
                if not xs:
                    continue
                positive = positive and min(lo) > 0
                color, style = palette[row.racer]
                ax.plot(xs, med, ls=style, color=color, label=row.label, lw=1.4)
                ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)
            if metric == target["metric"]:
                ax.axhline(target["value"], color="k", ls=":", lw=1, label="target")
            if positive and metric != "val_acc" and _spans_decades(rows, metric):
                ax.set_yscale("log")
            ax.set_xlabel("step" if axis == "step" else "training wall-clock (s)")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.suptitle(f"{rows[0].task}: median over seeds, band = min..max")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _palette(plt: Any, rows: Sequence[Row]) -> dict[str, tuple[Any, Any]]:
    """``{racer: (color, line style)}``: one colour per algorithm, its peers in the same colour
    with dashed or dotted lines, so an implementation sits next to the one it mirrors."""
    cmap = plt.get_cmap("tab20")  # dark shades first, then the light ones

    def shade(i: int) -> Any:
        return cmap((2 * i) % 20 + (2 * i // 20) % 2)

    own = [r.racer for r in rows if not r.peer]
    colors = {name: shade(i) for i, name in enumerate(own)}
    styles = [(0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 1, 1, 1, 1, 1))]
    out: dict[str, tuple[Any, Any]] = {name: (colors[name], "-") for name in own}
    used: dict[str, int] = {}
    for row in rows:
        if row.peer:
            n = used.get(row.mirrors, 0)
            used[row.mirrors] = n + 1
            color = colors.get(row.mirrors, shade(len(own) + len(used)))
            out[row.racer] = (color, styles[n % len(styles)])
    return out


def _spans_decades(rows: Sequence[Row], metric: str) -> bool:
    values = [
        p[metric]
        for row in rows
        for r in row.seeds
        for p in r["curve"]
        if p.get(metric) is not None and p[metric] > 0
    ]
    return bool(values) and max(values) / min(values) > 30


def time_to_target(rows: Sequence[Row], path: Path) -> None:
    """Horizontal bars of median time to target, min..max whiskers, AdamW's median marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6), layout="constrained")
    reached = [r.time_to_target for r in rows]
    finite = [s.hi for s in reached if s.hi is not None and math.isfinite(s.hi)]
    finite += [s.median for s in reached if s.median is not None and math.isfinite(s.median)]
    limit = max(finite, default=1.0) * 1.15
    palette = _palette(plt, rows)
    for y, row in enumerate(rows):
        s = row.time_to_target
        ok = s.median is not None and math.isfinite(s.median)
        color = palette[row.racer][0]
        if ok:
            hi = s.hi if s.hi is not None and math.isfinite(s.hi) else limit
            ax.barh(y, s.median, color=color, hatch="//" if row.peer else None, alpha=0.85)
            ax.errorbar(
                s.median,
                y,
                xerr=[[s.median - (s.lo or s.median)], [hi - s.median]],
                fmt="none",
                ecolor="k",
                capsize=3,
                lw=1,
            )
        else:
            label = f"median not reached ({s.n}/{s.of} seeds reached)" if s.n else "not reached"
            ax.text(0.01 * limit, y, label, va="center", fontsize=8)
    base = baseline(rows)
    median = None if base is None else base.time_to_target.median
    if median is not None and math.isfinite(median):
        ax.axvline(median, color="k", ls="--", lw=1, label=f"{BASELINE} median (baseline)")
        ax.legend(fontsize=8, loc="lower right")
    labels = [
        r.label
        + (
            ""
            if r.time_to_target.n in (0, r.time_to_target.of)
            else f"\n{r.time_to_target.n}/{r.time_to_target.of} seeds reached"
        )
        for r in rows
    ]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, limit)
    t = rows[0].seeds[0]["target"]
    ax.set_xlabel(
        f"training seconds to {t['metric']} {'<=' if t['mode'] == 'min' else '>='} {t['value']}"
    )
    ax.set_title(f"{rows[0].task}: time to target (median, min..max over seeds)")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(summary: Mapping[str, Sequence[Row]], directory: Path) -> list[Path]:
    """Both plots for every task with results; the paths written."""
    written = []
    for task, rows in summary.items():
        rows = [r for r in rows if r.seeds and r.seeds[0]["curve"]]
        if not rows:
            continue
        for name, draw in (("curves", curves), ("time_to_target", time_to_target)):
            path = Path(directory) / f"{task}_{name}.png"
            draw(rows, path)
            written.append(path)
    return written
