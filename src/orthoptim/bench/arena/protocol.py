"""The race's protocol: an equal lr sweep per racer, the lr picked on validation, then seeds at
that lr; its options (``RaceConfig``) and grid rules. ``orthoptim.bench.arena.sweep`` runs it.

Protocol, per task (every racer gets the same budget and the same rules):

1. AdamW first: the log-spaced factors ``lr_factors(points, span)`` (``x1/span ... x span``)
   times its registry default lr, one run each at seed 0, extended at the edges (4.).
2. The AdamW route of every racer whose optimizer is a plan (a matrix optimizer with AdamW for
   embeddings, head, biases and norms; ours and the peers' Muon + AdamW) runs at the lr AdamW's
   sweep picked on this task (``adamw_route="tuned"``, the migrating user's protocol: keep the
   AdamW lr, sweep the matrix lr). ``"ratio"`` runs the route at the family's published ratio
   of the matrix lr instead (the protocol before this rule); ``"sweep"`` adds a coarse second
   axis, the route at ``ROUTE_FACTORS`` times AdamW's pick.
3. Every other racer sweeps the same factors times its own default lr (interleaved: all racers
   at one grid point, then the next, so a change in machine load spreads over every racer).
4. Edges: while a racer's picked lr is the largest (smallest) of its sweep, its grid extends by
   the grid's own factor in that direction, up to ``MAX_EXTENSIONS`` points per side, until the
   pick is interior or the run beyond it diverges; a pick still at an edge is flagged.
5. Pick: the run ending with the lowest ``task.select_metric`` on held-out data (diverged runs
   rank last; ties go to the factor nearer 1). Seeds ``1 .. seeds-1`` run at the picked lr; the
   sweep's seed-0 run is the first seed (runs are deterministic given lr and seed).

Each run is appended to ``records.jsonl`` as soon as it ends; the report is rendered from that
file alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orthoptim.bench.arena import tasks
from orthoptim.bench.arena.racers import Racer

AdamWRouteRule = Literal["tuned", "ratio", "sweep"]
ADAMW_ROUTE_RULES: tuple[str, ...] = ("tuned", "ratio", "sweep")
ROUTE_FACTORS: tuple[float, ...] = (0.25, 1.0, 4.0)
"""``adamw_route="sweep"``: the AdamW route's lr at these factors of AdamW's picked lr."""
MAX_EXTENSIONS = 3
"""Extra grid points per side while the picked lr sits at an edge of the sweep."""


def lr_factors(points: int, span: float) -> list[float]:
    """``points`` log-spaced factors from ``1/span`` to ``span`` (1 is among them when
    ``points`` is odd)."""
    if points < 1:
        raise ValueError(f"the lr grid needs at least 1 point, got {points}")
    if not (math.isfinite(span) and span >= 1):
        raise ValueError(f"lr span must be finite and >= 1, got {span}")
    if points == 1:
        return [1.0]
    return [span ** (2 * i / (points - 1) - 1) for i in range(points)]


def grid_step(factors: Sequence[float]) -> float | None:
    """The factor between neighbouring grid points (the edge rule extends by it); ``None`` for a
    grid of one point or of equal points, which has no direction to extend in."""
    if len(factors) < 2:
        return None
    step = factors[1] / factors[0]
    return step if step > 1 + 1e-9 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceConfig:
    """What to race and how.

    Args:
        tasks: task names (``orthoptim.bench.arena.tasks.TASKS``).
        specs: registry name patterns (all when ``None``); ``adamw`` always races as baseline.
        peers: race installed peers of the selected algorithms.
        lr_points: points of the lr grid.
        lr_span: the grid spans ``x1/lr_span ... x lr_span`` the default lr.
        seeds: seeds at the picked lr (the sweep's seed-0 run is the first).
        adamw_route: the lr of every plan's AdamW route: ``"tuned"`` (AdamW's pick on the
            task), ``"ratio"`` (the family's ratio of the matrix lr) or ``"sweep"`` (a coarse
            second axis around AdamW's pick); see the module docstring.
        extend_edges: extend a sweep whose pick sits at an edge (``MAX_EXTENSIONS`` per side).
        quick: small task configurations (``orthoptim race --quick``).
        data: a user text file or image folder for the one real task selected.
        steps: override every task's number of steps.
        out: output folder (``runs/<timestamp>`` when ``None``).
        progress: show a tqdm progress bar.
        threads: torch CPU threads during the race (restored after). One by default: the
            models are tiny, and with more threads OpenMP spins at barriers whenever another
            process wants the cores, which turned 10 ms steps into seconds on a busy 2-core
            machine.
        command: the command line, stored in every record.
    """

    tasks: tuple[str, ...] = tasks.TASKS
    specs: tuple[str, ...] | None = None
    peers: bool = True
    lr_points: int = 5
    lr_span: float = 8.0
    seeds: int = 3
    adamw_route: AdamWRouteRule = "tuned"
    extend_edges: bool = True
    quick: bool = False
    data: str | None = None
    steps: int | None = None
    out: Path | None = None
    progress: bool = True
    threads: int | None = 1
    command: str = ""


QUICK = {"lr_points": 3, "seeds": 2}
"""``--quick`` defaults where the user gives none: 3 lr points, 2 seeds."""


def check(config: RaceConfig) -> None:
    """``ValueError`` for a configuration the race cannot run, before anything runs."""
    if config.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {config.seeds}")
    if config.adamw_route not in ADAMW_ROUTE_RULES:
        raise ValueError(
            f"adamw_route must be one of {ADAMW_ROUTE_RULES}, got {config.adamw_route!r}"
        )
    lr_factors(config.lr_points, config.lr_span)


def ratio_adamw_lr(racer: Racer, lr: float) -> float | None:
    """The AdamW route's lr at the family's ratio of ``lr`` (``None`` without a route)."""
    return None if racer.adamw_lr_scale is None else lr * racer.adamw_lr_scale
