"""PNG plots of a race, drawn from the report's summary (records only; matplotlib, Agg).

Per task, three figures, all on the task's target metric:

- ``<task>_curves.png``, the headline: at most ``HEADLINE`` racers (AdamW and Muon, drawn thick,
  the best racer of each family, then peers of AdamW/Muon while room remains), against step and
  against training wall-clock and, where the runs recorded them, against training FLOPs (model
  forward and backward plus the optimizer's estimate, ``orthoptim.bench.race.flops``), zoomed on the
  target (dotted line); median over seeds with a min..max band, peers dashed. A race has ~27
  racers: drawn together they are unreadable.
- ``<task>_curves_all.png``: small multiples, one panel per family with every racer of it,
  AdamW as a thin reference in every panel, all panels on the same y-range.
- ``<task>_time_to_target.png``: every racer's median time to target with min..max whiskers,
  fastest first, AdamW's median marked; racers of the headline in their headline colour.

Colours are assigned explicitly (tab10, then darker and lighter extras, then spaced hues), never
cycled, so no two lines of a figure (of a panel, in the small multiples) share a colour; a racer
keeps its headline colour in the other two figures, and no other racer of the task gets it.
The selection, family, colour and y-range rules are small pure functions (``select_headline``,
``family``, ``row_family``, ``assign_colors``, ``y_limits``), testable without drawing.
"""

from __future__ import annotations

import colorsys
import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from orthoptim import registry
from orthoptim.bench.race.flops import training_step_flops
from orthoptim.bench.race.racers import BASELINE
from orthoptim.bench.race.summary import Row, baseline
from orthoptim.bench.shared.optional import require

MUON = "muon"
EMPHASISED = (BASELINE, MUON)  # always in the headline, drawn thick: the two references
HEADLINE = 8  # racers in the headline figure: more and the eye cannot follow them

BASELINES = "baselines"
ORTHOGONAL = "orthogonalized momentum"
KRONECKER = "Kronecker / Fisher"
NEIGHBOURS = "neighbours"
OTHER = "other"
FAMILIES = (BASELINES, ORTHOGONAL, KRONECKER, NEIGHBOURS, OTHER)

# tab10, ordered so the references get blue and red, and grey ("not important") and pink (close
# to a red peer's colour) come last; then the darkest row of tab20b (saturated), then tab10's
# light shades, kept for last because they fade into the white background.
TAB10 = (
    "#1f77b4",  # blue
    "#d62728",  # red
    "#ff7f0e",  # orange
    "#2ca02c",  # green
    "#9467bd",  # purple
    "#8c564b",  # brown
    "#bcbd22",  # olive
    "#17becf",  # cyan
    "#7f7f7f",  # grey
    "#e377c2",  # pink: last, it is close to a red peer's colour
)
EXTRA = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")  # indigo .. plum (tab20b)
PALE = ("#aec7e8", "#ff9896", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d")
PALETTE = TAB10 + EXTRA + PALE
FIXED = {BASELINE: TAB10[0], MUON: TAB10[1]}
UNSHOWN = "#d9d9d9"  # bars of racers that are not in the headline
_PEER_STYLES = ((0, (5, 2)), (0, (2, 1.5)), (0, (6, 2, 1, 2)))


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "the race's plots")
    matplotlib.use("Agg", force=True)
    return require("matplotlib.pyplot", "the race's plots")


# --- the pure rules: family, ranking, selection, colours, y-range -------------------------------


def family(name: str) -> str:
    """The family of the registered optimizer ``name``, from its registry tags, so the figures
    group racers the way the library describes them; ``OTHER`` for names it does not know."""
    try:
        tags = registry.get(name).tags
    except KeyError:
        return OTHER
    if "baseline" in tags:
        return BASELINES
    if "orthogonal" in tags or name == "auon":  # auon orthogonalizes in linear time
        return ORTHOGONAL
    if tags & {"kronecker", "second-order", "fisher"}:
        return KRONECKER
    return NEIGHBOURS


def row_family(row: Row) -> str:
    """A racer's family; a peer (another library's implementation) joins the family of the
    algorithm it mirrors, so it sits next to orthoptim's version of it."""
    return family(row.mirrors if row.peer else row.racer)


def _mode(row: Row) -> str:
    return row.seeds[0]["target"]["mode"] if row.seeds else "min"


def rank_key(row: Row) -> tuple[float, float]:
    """Sort key, best first: median time to target (not reached: last), then the median final
    target metric in the task's direction, which orders racers that never arrived."""
    t = row.time_to_target.median
    time = t if t is not None and math.isfinite(t) else math.inf
    final = row.final_target.median
    sign = 1.0 if _mode(row) == "min" else -1.0
    return time, math.inf if final is None or math.isnan(final) else sign * final


def select_headline(rows: Sequence[Row], limit: int = HEADLINE) -> list[Row]:
    """The racers of the headline figure, in drawing order: AdamW and Muon (the references a
    reader compares against), the best of each family (own implementations; the family's peers
    only when it has none), then peers of AdamW/Muon, best first and alternating between the
    two, while fewer than ``limit`` are chosen."""
    chosen = [r for name in EMPHASISED for r in rows if r.racer == name and not r.peer][:limit]
    for fam in FAMILIES:
        members = [r for r in rows if row_family(r) == fam]
        candidates = [r for r in members if not r.peer] or members
        if candidates and len(chosen) < limit:
            best = min(candidates, key=rank_key)
            if all(best.racer != c.racer for c in chosen):
                chosen.append(best)
    names = {r.racer for r in chosen}
    queues = [
        sorted(
            (r for r in rows if r.peer and r.mirrors == name and r.racer not in names),
            key=rank_key,
        )
        for name in EMPHASISED
    ]
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def _spare_colors(n: int) -> list[str]:
    """Colours beyond the palette, evenly spaced hues, for panels with more than 20 racers."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hls_to_rgb((i * 0.618034) % 1.0, 0.4, 0.75)
        out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return out


def partner(color: str) -> str:
    """A peer's colour: its mirror's colour mixed 40% with white, so the pair reads as related
    while staying a different colour (and darker than tab20's pale shades)."""
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + 0.4 * (255 - c)):02x}" for c in rgb)


def assign_colors(
    rows: Sequence[Row],
    fixed: Mapping[str, str] | None = None,
    reserved: Collection[str] = (),
) -> dict[str, str]:
    """``{racer: colour}``, all different, in the order of ``rows``. A racer takes its colour
    from ``fixed`` (AdamW blue and Muon red by default, the headline's colours in the other
    figures) when still free; a peer takes ``partner`` of the colour of the racer it mirrors,
    so the pair reads as related; anything else takes the first palette colour neither used
    nor ``reserved`` (the headline's colours, so that one colour names one racer in all the
    figures of a task). Never cycles: past the palette come evenly spaced hues."""
    fixed = FIXED if fixed is None else fixed
    taken = set(reserved) | set(fixed.values())  # AdamW's blue stays AdamW's, even if absent
    out: dict[str, str] = {}
    for row in rows:  # fixed colours first, so a later racer cannot steal one
        color = fixed.get(row.racer)
        if color is not None and color not in out.values():
            out[row.racer] = color
    spare = iter(_spare_colors(len(rows)))
    for row in rows:
        if row.racer in out:
            continue
        mirror = out.get(row.mirrors) or fixed.get(row.mirrors)
        light = partner(mirror) if row.peer and mirror else None
        free = [c for c in PALETTE if c not in taken]
        color = light if light and light not in taken else (free[0] if free else next(spare))
        out[row.racer] = color
        taken.add(color)
    return out


def headline_colors(shown: Sequence[Row]) -> dict[str, str]:
    """The headline's colours, which the other figures reuse for the same racers."""
    return assign_colors(shown, FIXED)


def y_limits(
    curves: Sequence[Sequence[float]], target: float, mode: str, log: bool = False
) -> tuple[float, float]:
    """The y-range that shows how racers approach the target rather than the first steps.

    For ``mode == "min"`` (for "max" the mirror image): with ``best`` the lowest value of the
    curves, ``[best - 8% gap, target + 2 gap]``, ``gap = |target - best|``, the top clipped to
    the highest value drawn. The target sits a third of the way up, so the finish is visible
    and the start (a loss of 5.5 for a target of 2.5) is cut. If no curve reaches the target,
    the range runs from just below the target to ``2 gap`` above the closest approach. With
    ``log`` the rule applies to decades."""
    values = [v for c in curves for v in c if math.isfinite(v) and (v > 0 or not log)]
    if log and target <= 0:
        log = False
    if not values:
        pad = abs(target) * 0.1 or 1.0
        return (target / 2, target * 2) if log else (target - pad, target + pad)

    def fwd(v: float) -> float:
        return (math.log10(v) if log else v) * (1.0 if mode == "min" else -1.0)

    def back(v: float) -> float:
        v = v * (1.0 if mode == "min" else -1.0)
        return 10.0**v if log else v

    t = fwd(target)
    data = [fwd(v) for v in values]
    best, worst = min(data), max(data)
    low, high = min(best, t), max(best, t)
    gap = high - low or 0.05 * (worst - best) or 0.05 * abs(t) or 0.05
    lower = low - 0.08 * gap
    upper = max(min(high + 2.0 * gap, worst + 0.02 * gap), high + 0.1 * gap)
    a, b = back(lower), back(upper)
    return min(a, b), max(a, b)


# --- drawing -------------------------------------------------------------------------------------


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


def time_limit(rows: Sequence[Row]) -> float:
    """The wall-clock range of the small multiples, shared by the panels: up to 1.6x the median
    racer's training time, so one slow racer (5x the time per step) does not squeeze the others
    into a corner; its line runs off the panel and its legend entry still gives its time to
    target."""
    ends = [r["curve"][-1]["time_s"] for row in rows for r in row.seeds[:1] if r["curve"]]
    if not ends:
        return 1.0
    return min(max(ends), 1.6 * statistics.median(ends)) * 1.02


def bar_limit(rows: Sequence[Row]) -> float:
    """The time axis of the bars: the longest finite whisker, but at most 4x the median racer's
    time to target, so one very slow racer does not flatten all the others (its bar runs off
    the edge, its time written there with an arrow)."""
    medians = [m for r in rows if (m := r.time_to_target.median) is not None and math.isfinite(m)]
    his = [h for r in rows if (h := r.time_to_target.hi) is not None and math.isfinite(h)]
    if not medians:
        return 1.0
    return min(max(medians + his) * 1.15, 4 * statistics.median(medians))


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
        s = row.time_to_target
        ok = s.median is not None and math.isfinite(s.median)
        color = colors.get(row.racer, UNSHOWN)
        if ok:
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
    base = baseline(rows)
    median = None if base is None else base.time_to_target.median
    if median is not None and math.isfinite(median):
        ax.axvline(median, color="k", ls="--", lw=1, label=f"{BASELINE} median (baseline)")
        ax.legend(fontsize=8, loc="upper right")  # fastest first: empty there
    labels = []
    for r in rows:
        s = r.time_to_target
        partial = "" if s.n in (0, s.of) else f" ({s.n}/{s.of} reached)"
        labels.append(f"{r.label}{partial}")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    for tick, row in zip(ax.get_yticklabels(), rows, strict=True):
        if row.racer in colors:
            tick.set_fontweight("bold")
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
