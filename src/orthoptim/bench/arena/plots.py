"""The rules of a race's figures, pure functions testable without drawing: which racers the
headline shows (``select_headline``), the family of a racer (``family``, ``row_family``), their
colours (``assign_colors``, never cycled), the y-range zoomed on the target (``y_limits``) and the
time axes (``time_limit``, ``bar_limit``). ``orthoptim.bench.arena.figures`` draws the figures.
"""

from __future__ import annotations

import colorsys
import math
import statistics
from collections.abc import Collection, Mapping, Sequence

from orthoptim import registry
from orthoptim.bench.arena.racers import BASELINE
from orthoptim.bench.arena.summary import Row

MUON = "muon"
EMPHASISED = (BASELINE, MUON)  # always in the headline, drawn thick: the two references
HEADLINE = 8  # racers in the headline figure: more and the eye cannot follow them

BASELINES = "baselines"
ORTHOGONAL = "orthogonalized momentum"
# Kronecker and Fisher preconditioners, and the Hessian-based methods (oasis, smb,
# saddle_free_newton): the registry's "second-order" tag
KRONECKER = "second-order (Kronecker, Fisher, Hessian)"
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
