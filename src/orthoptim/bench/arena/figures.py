"""PNG plots of a race, drawn from the report's summary (records only; matplotlib, Agg).

Per task, three figures, all on the task's target metric:

- ``<task>_curves.png``, the headline: at most ``HEADLINE`` racers (AdamW and Muon, drawn thick,
  the best racer of each family, then peers of AdamW/Muon while room remains), against step and
  against training wall-clock and, where the runs recorded them, against training FLOPs (model
  forward and backward plus the optimizer's estimate, ``orthoptim.bench.arena.flops``), zoomed
  on the target (dotted line); median over seeds with a min..max band, peers dashed. A race has
  ~27 racers: drawn together they are unreadable.
- ``<task>_curves_all.png``: small multiples, one panel per family with every racer of it,
  AdamW as a thin reference in every panel, all panels on the same y-range.
- ``<task>_time_to_target.png``: every racer's median time to target with min..max whiskers,
  fastest first, AdamW's median marked; racers of the headline in their headline colour.

Colours are assigned explicitly (tab10, then darker and lighter extras, then spaced hues), never
cycled, so no two lines of a figure (of a panel, in the small multiples) share a colour; a racer
keeps its headline colour in the other two figures, and no other racer of the task gets it.
The selection, family, colour and y-range rules are small pure functions in
``orthoptim.bench.arena.plots`` (``select_headline``, ``family``, ``row_family``,
``assign_colors``, ``y_limits``), testable without drawing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orthoptim.bench.arena.flops import training_step_flops
from orthoptim.bench.arena.plots import (
    EMPHASISED,
    FAMILIES,
    FIXED,
    assign_colors,
    bar_limit,
    headline_colors,
    rank_key,
    row_family,
    select_headline,
    time_limit,
    y_limits,
)
from orthoptim.bench.arena.racers import BASELINE
from orthoptim.bench.arena.summary import Row, baseline
from orthoptim.bench.shared.optional import require

UNSHOWN = "#d9d9d9"  # bars of racers that are not in the headline
_PEER_STYLES = ((0, (5, 2)), (0, (2, 1.5)), (0, (6, 2, 1, 2)))


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "the race's plots")
    matplotlib.use("Agg", force=True)
    return require("matplotlib.pyplot", "the race's plots")


def _band(seeds: Sequence[Mapping[str, Any]], metric: str, axis: str) -> tuple[list[float], ...]:
    """(x, median, lo, hi) at the evaluation points all seeds share (``axis``: step, time, or
    flops: step times the run's training FLOPs per step)."""
    per_step = [training_step_flops(r) for r in seeds]
    if axis == "flops" and any(f is None for f in per_step):
        return [], [], [], []
    curves = [
        [
            {**p, "flops": p["step"] * (f or 0.0)}
            for p in r["curve"]
            if p.get(metric) is not None and math.isfinite(p[metric])
        ]
        for r, f in zip(seeds, per_step, strict=True)
    ]
    curves = [c for c in curves if c]
    if not curves:
        return [], [], [], []
    n = min(len(c) for c in curves)
    key = {"step": "step", "time": "time_s", "flops": "flops"}[axis]
    xs, med, lo, hi = [], [], [], []
    for i in range(n):
        values = [c[i][metric] for c in curves]
        xs.append(statistics.median(c[i][key] for c in curves))
        med.append(statistics.median(values))
        lo.append(min(values))
        hi.append(max(values))
    return xs, med, lo, hi


def _target(rows: Sequence[Row]) -> Mapping[str, Any]:
    return rows[0].seeds[0]["target"]


def _medians(rows: Sequence[Row], metric: str) -> list[list[float]]:
    return [_band(row.seeds, metric, "step")[1] for row in rows]


def _use_log(curves: Sequence[Sequence[float]], mode: str) -> bool:
    """Log scale for a minimised metric whose drawn values span more than 30x (rel. errors)."""
    values = [v for c in curves for v in c]
    return mode == "min" and bool(values) and min(values) > 0 and max(values) / min(values) > 30


def _seconds(s: float | None) -> str:
    return "not reached" if s is None or not math.isfinite(s) else f"{s:.3g} s"


def _style(row: Row, styles: Mapping[str, Any]) -> tuple[Any, float, int]:
    """(line style, width, z-order): references thick and on top, peers dashed."""
    if row.racer in EMPHASISED and not row.peer:
        return "-", 2.8, 4
    return (styles.get(row.racer, "--") if row.peer else "-"), 1.6, 3


def _peer_styles(rows: Sequence[Row]) -> dict[str, Any]:
    """Peers of the same racer get different dash patterns, on top of different colours."""
    count: dict[str, int] = {}
    out = {}
    for row in rows:
        if row.peer:
            n = count.get(row.mirrors, 0)
            count[row.mirrors] = n + 1
            out[row.racer] = _PEER_STYLES[n % len(_PEER_STYLES)]
    return out


def _draw(
    ax: Any,
    rows: Sequence[Row],
    colors: Mapping[str, str],
    metric: str,
    axis: str,
    with_family: bool,
) -> None:
    """Median lines with min..max bands; legend labels give the time to target (and, where
    families are mixed, the family)."""
    styles = _peer_styles(rows)
    for row in rows:
        xs, med, lo, hi = _band(row.seeds, metric, axis)
        if not xs:
            continue
        ls, lw, z = _style(row, styles)
        fam = f" [{row_family(row)}]" if with_family else ""
        text = f"{row.label}{fam}: {_seconds(row.time_to_target.median)}"
        ax.plot(xs, med, ls=ls, lw=lw, color=colors[row.racer], zorder=z, label=text)
        ax.fill_between(xs, lo, hi, color=colors[row.racer], alpha=0.1, lw=0, zorder=1)


def _finish_axes(
    ax: Any, target: Mapping[str, Any], limits: tuple[float, float], log: bool
) -> None:
    ax.axhline(target["value"], color="k", ls=":", lw=1.3, zorder=5)
    if log:
        ax.set_yscale("log")
    ax.set_ylim(*limits)
    ax.grid(alpha=0.3)


AXIS_LABELS = {
    "step": "step",
    "time": "training wall-clock (s)",
    "flops": "training FLOPs (model fwd+bwd matmuls + optimizer estimate)",
}


def _has_flops(rows: Sequence[Row]) -> bool:
    return all(training_step_flops(r) is not None for row in rows for r in row.seeds)


def curves(rows: Sequence[Row], path: Path) -> None:
    """The headline: the racers of ``select_headline`` against step (left) and training
    wall-clock (right), zoomed on the target; the legend sits under the panels."""
    plt = _pyplot()
    target = _target(rows)
    metric, mode = target["metric"], target["mode"]
    shown = select_headline(rows)
    colors = headline_colors(shown)
    medians = _medians(shown, metric)
    log = _use_log(medians, mode)
    limits = y_limits(medians, target["value"], mode, log)
    # Loss against training FLOPs (model + optimizer) where every shown run recorded them.
    axes_of = ("step", "time") + (("flops",) if _has_flops(shown) else ())
    fig, axes = plt.subplots(
        1, len(axes_of), figsize=(6.5 * len(axes_of), 6.2), layout="constrained"
    )
    for ax, axis in zip(axes, axes_of, strict=True):
        _draw(ax, shown, colors, metric, axis, with_family=True)
        _finish_axes(ax, target, limits, log)
        ax.set_xlabel(AXIS_LABELS[axis])
        ax.set_ylabel(metric)
    axes[0].plot([], [], color="k", ls=":", lw=1.3, label=f"target {metric} = {target['value']}")
    handles, labels = axes[0].get_legend_handles_labels()  # the right panel's are the same
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        f"{rows[0].task}: AdamW, Muon (thick), the best of each family by time to target, "
        f"peers dashed\nmedian over seeds, band = min..max; {len(rows)} racers in "
        f"{path.stem}_all.png",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panels(rows: Sequence[Row]) -> list[tuple[str, list[Row]]]:
    """(family, its racers, own implementations first, each followed by its peers) in
    ``FAMILIES`` order, families without racers left out."""
    out = []
    for fam in FAMILIES:
        members = [r for r in rows if row_family(r) == fam]
        own = [r for r in members if not r.peer]
        ordered = []
        for r in own:
            ordered += [r] + [p for p in members if p.peer and p.mirrors == r.racer]
        placed = {r.racer for r in ordered}
        ordered += [r for r in members if r.racer not in placed]
        if ordered:
            out.append((fam, ordered))
    return out


def curves_all(rows: Sequence[Row], path: Path) -> None:
    """Small multiples: one panel per family against training wall-clock, every racer of the
    family in it, AdamW as a thin reference in the others, one y-range for all panels."""
    plt = _pyplot()
    target = _target(rows)
    metric, mode = target["metric"], target["mode"]
    colors_of_headline = headline_colors(select_headline(rows))
    reserved = set(colors_of_headline.values()) | set(FIXED.values())
    medians = _medians(rows, metric)
    log = _use_log(medians, mode)
    limits = y_limits(medians, target["value"], mode, log)
    panels = _panels(rows)
    reference = baseline(rows)
    x_max = time_limit(rows)
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(8.2 * ncols, 4.3 * nrows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, (fam, members) in zip(axes.flat, panels, strict=False):
        inside = reference is None or any(r.racer == reference.racer for r in members)
        ref = [] if inside or reference is None else [reference]
        colors = assign_colors(ref + members, colors_of_headline, reserved)
        if ref:
            xs, med, _, _ = _band(ref[0].seeds, metric, "time")
            ax.plot(
                xs, med, color=colors[BASELINE], lw=1.2, alpha=0.7, label=f"{BASELINE} (reference)"
            )
        _draw(ax, members, colors, metric, "time", with_family=False)
        _finish_axes(ax, target, limits, log)
        ax.set_title(f"{fam} ({len(members)})", fontsize=10)
        ax.set_xlabel("training wall-clock (s)")
        ax.set_ylabel(metric)
        ax.tick_params(labelleft=True)
        ax.set_xlim(0, x_max)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"{rows[0].task}: every racer by family; median over seeds, band = min..max, peers "
        f"dashed, dotted line = target {metric} {target['value']}",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_to_target(rows: Sequence[Row], path: Path) -> None:
    """Horizontal bars of median time to target, fastest first, min..max whiskers, AdamW's
    median marked; headline racers in their headline colour (and bold), the rest light grey."""
    plt = _pyplot()
    colors = headline_colors(select_headline(rows))
    rows = sorted(rows, key=rank_key)
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.9), layout="constrained")
    limit = bar_limit(rows)
    for y, row in enumerate(rows):
        _bar(ax, y, row, colors.get(row.racer, UNSHOWN), limit)
    base = baseline(rows)
    median = None if base is None else base.time_to_target.median
    if median is not None and math.isfinite(median):
        ax.axvline(median, color="k", ls="--", lw=1, label=f"{BASELINE} median (baseline)")
        ax.legend(fontsize=8, loc="upper right")  # fastest first: empty there
    _bar_labels(ax, rows, colors)
    ax.set_ylim(len(rows) - 0.4, -0.6)
    ax.set_xlim(0, limit)
    t = _target(rows)
    ax.set_xlabel(
        f"training seconds to {t['metric']} {'<=' if t['mode'] == 'min' else '>='} {t['value']}"
    )
    ax.set_title(
        f"{rows[0].task}: time to target, fastest first (median, whiskers min..max over seeds)\n"
        "coloured and bold: in the headline figure; hatched: peers",
        fontsize=9.5,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bar(ax: Any, y: int, row: Row, color: str, limit: float) -> None:
    """One racer's bar: median time to target, min..max whisker and the time written beside
    it; a note where the median was not reached."""
    s = row.time_to_target
    if s.median is not None and math.isfinite(s.median):
        hi = s.hi if s.hi is not None and math.isfinite(s.hi) else math.inf
        ax.barh(
            y,
            s.median,
            height=0.72,
            color=color,
            edgecolor="#555555" if row.peer else "none",
            hatch="///" if row.peer else None,
            lw=0.5,
        )
        ax.errorbar(
            s.median,
            y,
            xerr=[[s.median - (s.lo or s.median)], [max(0.0, min(hi, 2 * limit) - s.median)]],
            fmt="none",
            ecolor="k",
            capsize=2.5,
            lw=0.9,
        )
        text = f"{s.median:.3g} s" + ("" if hi <= limit else " \u2192")
        inside = hi >= 0.88 * limit  # after the whisker, else inside the right edge
        ax.text(
            0.995 * limit if inside else hi + 0.01 * limit,
            y,
            text,
            va="center",
            ha="right" if inside else "left",
            fontsize=7,
            bbox={"fc": "white", "ec": "none", "pad": 0.6, "alpha": 0.85},
            zorder=6,
        )
    else:
        label = f"median not reached ({s.n}/{s.of} seeds reached)" if s.n else "not reached"
        ax.text(0.01 * limit, y, label, va="center", fontsize=7.5, color="#444444")


def _bar_labels(ax: Any, rows: Sequence[Row], colors: Mapping[str, str]) -> None:
    """The racers' names on the y axis (with the seeds that reached the target where some did
    not), bold for the racers of the headline."""
    labels = []
    for r in rows:
        s = r.time_to_target
        partial = "" if s.n in (0, s.of) else f" ({s.n}/{s.of} reached)"
        labels.append(f"{r.label}{partial}")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    for tick, row in zip(ax.get_yticklabels(), rows, strict=True):
        if row.racer in colors:
            tick.set_fontweight("bold")


def plot_all(summary: Mapping[str, Sequence[Row]], directory: Path) -> list[Path]:
    """The three plots for every task with results; the paths written."""
    written = []
    drawers = (("curves", curves), ("curves_all", curves_all), ("time_to_target", time_to_target))
    for task, rows in summary.items():
        rows = [r for r in rows if r.seeds and r.seeds[0]["curve"]]
        if not rows:
            continue
        for name, draw in drawers:
            path = Path(directory) / f"{task}_{name}.png"
            draw(rows, path)
            written.append(path)
    return written
