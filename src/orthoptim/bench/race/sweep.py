"""The race: an equal lr sweep per racer, the lr picked on validation, then seeds at that lr.

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

import datetime as dt
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from orthoptim.bench.race import records, report, tasks
from orthoptim.bench.race.peers import peer_racers
from orthoptim.bench.race.racers import BASELINE, Racer, spec_racers
from orthoptim.bench.race.runner import run, train_step
from orthoptim.bench.race.selection import final_value, pick
from orthoptim.bench.race.tasks.base import Task
from orthoptim.bench.shared.optional import require

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
        tasks: task names (``orthoptim.bench.race.tasks.TASKS``).
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


def _make_tasks(config: RaceConfig) -> list[tasks.Task]:
    check(config)
    names = list(dict.fromkeys(config.tasks))
    if config.data is not None:
        real = [n for n in names if n in tasks.REAL]
        if len(real) != 1:
            raise ValueError(
                f"--data needs exactly one of the tasks {tasks.REAL} (e.g. --task lm --data "
                f"FILE or --task digits --data DIR); selected: {names}"
            )
    return [
        tasks.make(
            n,
            quick=config.quick,
            data=config.data if n in tasks.REAL else None,
            steps=config.steps,
        )
        for n in names
    ]


def select_racers(config: RaceConfig) -> tuple[list[Racer], dict[str, str], list[str]]:
    """The racers ``config.specs`` selects (AdamW always), their installed peers, the aliases
    raced once and notes on peers left out."""
    racers, aliases = spec_racers(config.specs)
    notes: list[str] = []
    if config.peers:
        mirrored = [r.name for r in racers] + list(aliases)
        peers, peer_notes = peer_racers(mirrored)
        racers += peers
        notes += peer_notes
    return racers, aliases, notes


def _probe(task: tasks.Task, racer: Racer) -> float | str:
    """Seconds one run of ``racer`` on ``task`` should take (from one timed step and one timed
    evaluation, after a warm-up step), or the reason it cannot run the task. The estimate only
    drives the progress bar's ETA; nothing reported comes from it."""
    try:
        model = task.model(0)
        opt = racer.make(model, racer.lr, _ratio_adamw_lr(racer, racer.lr))
    except (ValueError, TypeError) as err:
        return str(err)
    batches = task.batches(0)
    try:
        step_s = [train_step(task, racer, model, opt, next(batches))[1] for _ in range(2)][-1]
        if step_s <= 0:
            return math.nan  # a refused step: the race will record it
        t0 = time.perf_counter()
        task.evaluate(model)
        eval_s = time.perf_counter() - t0
    except (RuntimeError, ValueError, TypeError):
        return math.nan  # it will fail in the race too, and be recorded there
    return task.steps * step_s + (task.steps // task.eval_every + 1) * eval_s


def _out_dir(out: Path | None) -> Path:
    if out is None:
        out = Path("runs") / dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    if (out / records.RECORDS).exists():
        raise ValueError(f"{out / records.RECORDS} exists; choose another --out (records append)")
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass(frozen=True, slots=True)
class Entry:
    """A task, its configuration record, the racers that can run it, and each one's estimated
    seconds per run (for the progress bar)."""

    task: tasks.Task
    described: dict[str, Any]
    racers: tuple[Racer, ...]
    cost: dict[str, float]


def race(config: RaceConfig) -> Path:
    """Run the race on ``config.tasks``, write ``records.jsonl``, ``report.md`` and plots to the
    output folder, print the headline table, and return the folder."""
    return run_race(_make_tasks(config), config)


def run_race(
    task_list: Sequence[Task], config: RaceConfig, racers: Sequence[Racer] | None = None
) -> Path:
    """The race on these tasks (built-in or a user's, ``orthoptim.bench.race.api``) with the
    racers ``config`` selects, or ``racers`` where given (the final's)."""
    check(config)
    require("matplotlib", "the race's plots")  # fail now, not after the race
    if config.progress:
        require("tqdm", "the race's progress bar")
    if racers is None:
        selected, aliases, notes = select_racers(config)
    else:
        selected, aliases, notes = list(racers), {}, []
    factors = lr_factors(config.lr_points, config.lr_span)
    out = _out_dir(config.out)
    _run(task_list, selected, aliases, notes, factors, config, out)
    print(report.render(out))
    return out


def run_more(
    out: Path,
    task_list: Sequence[Task],
    racers: Sequence[Racer],
    notes: list[str],
    config: RaceConfig,
) -> None:
    """Race more tasks into an existing race folder ``out`` (the final), appending records."""
    check(config)
    require("matplotlib", "the race's plots")
    if not (out / records.RECORDS).is_file():
        raise ValueError(f"{out} holds no {records.RECORDS} to add to")
    factors = lr_factors(config.lr_points, config.lr_span)
    _run(task_list, racers, {}, notes, factors, config, out)


def _run(
    task_list: Sequence[Task],
    racers: Sequence[Racer],
    aliases: dict[str, str],
    notes: list[str],
    factors: Sequence[float],
    config: RaceConfig,
    out: Path,
) -> None:
    """Race every task into ``out / records.jsonl`` (appending)."""
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    bar = None
    try:
        entries, skipped = _enter(task_list, racers)
        race_info = {
            "id": out.name,
            "command": config.command or shlex.join(["orthoptim", *sys.argv[1:]]),
            "lr_factors": list(factors),
            "lr_span": config.lr_span,
            "seeds": config.seeds,
            "quick": config.quick,
            "tasks": [t.name for t in task_list],
            "racers": [r.name for r in racers],
            "aliases": aliases,
            "skipped": skipped,
            "notes": notes,
            "adamw_route": config.adamw_route,
            "route_factors": list(ROUTE_FACTORS) if config.adamw_route == "sweep" else [1.0],
            "max_extensions": MAX_EXTENSIONS if config.extend_edges else 0,
        }
        routes = len(ROUTE_FACTORS) if config.adamw_route == "sweep" else 1
        total = sum(
            cost * (len(factors) * (routes if _route_of(e, name) else 1) + config.seeds - 1)
            for e in entries
            for name, cost in e.cost.items()
        )
        bar = _progress_bar(total) if config.progress else None
        env = records.environment()
        for entry in entries:
            _TaskRace(entry, factors, config, race_info, env, out / records.RECORDS, bar).run()
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()


def _route_of(entry: Entry, name: str) -> bool:
    return next(r for r in entry.racers if r.name == name).has_adamw_route


def _ratio_adamw_lr(racer: Racer, lr: float) -> float | None:
    """The AdamW route's lr at the family's ratio of ``lr`` (``None`` without a route)."""
    return None if racer.adamw_lr_scale is None else lr * racer.adamw_lr_scale


def _enter(
    task_list: Sequence[tasks.Task], racers: Sequence[Racer]
) -> tuple[list[Entry], list[dict[str, str]]]:
    """Per task, the racers that can run it (with their cost estimates), and the pairs skipped
    with the reason."""
    entries, skipped = [], []
    for task in task_list:
        cost = {}
        for racer in racers:
            probed = _probe(task, racer)
            if isinstance(probed, str):
                skipped.append({"task": task.name, "racer": racer.name, "reason": probed})
            else:
                cost[racer.name] = probed
        known = [c for c in cost.values() if math.isfinite(c)]
        cost = {k: v if math.isfinite(v) else max(known, default=1.0) for k, v in cost.items()}
        entered = tuple(r for r in racers if r.name in cost)
        entries.append(Entry(task, task.describe(), entered, cost))
    return entries, skipped


class _TaskRace:
    """One task's race: AdamW's sweep, everyone else's, the edge extensions, then the seeds."""

    def __init__(
        self,
        entry: Entry,
        factors: Sequence[float],
        config: RaceConfig,
        race_info: dict[str, Any],
        env: dict[str, Any],
        path: Path,
        bar: Any,
    ) -> None:
        self.entry, self.task, self.factors, self.config = entry, entry.task, factors, config
        self.race_info, self.env, self.path, self.bar = race_info, env, path, bar
        self.sweeps: dict[str, list[dict[str, Any]]] = {r.name: [] for r in entry.racers}
        self.adamw_lr: float | None = None  # AdamW's pick on this task, for the plans' route
        # Runs of this task already in the records (an interrupted final run again with
        # --final --from DIR): read back instead of run again; runs are deterministic given
        # racer, lr and seed, so the protocol takes the same path through them.
        self.done = {
            _run_key(r["racer"], r["phase"], r["lr_factor"], r.get("adamw_lr_factor"), r["seed"]): r
            for r in (records.read(path) if path.is_file() else [])
            if r["task"] == self.task.name and not r["error"]
        }

    def run(self) -> None:
        first = [r for r in self.entry.racers if r.name == BASELINE]
        rest = [r for r in self.entry.racers if r.name != BASELINE]
        self._sweep(first)
        if first and self.config.adamw_route != "ratio":
            chosen = pick(self.sweeps[BASELINE], self.task.select_metric)
            if math.isfinite(final_value(chosen, self.task.select_metric)):
                self.adamw_lr = chosen["lr"]
        self._sweep(rest)
        chosen = {
            name: pick(runs, self.task.select_metric) for name, runs in self.sweeps.items() if runs
        }
        for seed in range(1, self.config.seeds):
            for racer in self.entry.racers:
                if racer.name in chosen:
                    c = chosen[racer.name]
                    self._one(racer, c["lr_factor"], c.get("adamw_lr_factor"), seed, "seed", 0)

    def _route_factors(self, racer: Racer) -> list[float | None]:
        """The AdamW route's factors of AdamW's pick this racer sweeps; ``[None]``: the route
        runs at the family ratio (``"ratio"``, or AdamW found no finite lr) or there is none."""
        if not racer.has_adamw_route or self.adamw_lr is None:
            return [None]
        return list(ROUTE_FACTORS) if self.config.adamw_route == "sweep" else [1.0]

    def _sweep(self, racers: Sequence[Racer]) -> None:
        """The grid (interleaved), then edge extensions in rounds over the racers still at
        an edge."""
        for factor in self.factors:
            for racer in racers:
                for route in self._route_factors(racer):
                    self.sweeps[racer.name].append(self._one(racer, factor, route, 0, "sweep", 0))
        step = grid_step(self.factors)
        if step is None or not self.config.extend_edges:
            return
        done: dict[tuple[str, int], int] = {}
        while True:
            todo = []
            for racer in racers:
                move = self._extension(self.sweeps[racer.name], step)
                if move is not None and done.get((racer.name, move[2]), 0) < MAX_EXTENSIONS:
                    todo.append((racer, move))
            if not todo:
                return
            for racer, (factor, route, side) in todo:
                n = done[(racer.name, side)] = done.get((racer.name, side), 0) + 1
                if self.bar is not None:
                    self.bar.total += self.entry.cost[racer.name]
                self.sweeps[racer.name].append(self._one(racer, factor, route, 0, "sweep", n))

    def _extension(
        self, runs: Sequence[dict[str, Any]], step: float
    ) -> tuple[float, float | None, int] | None:
        """``(factor, route factor, side)`` of the next point beyond the picked lr's edge, or
        ``None`` when the pick is interior (or nothing finished)."""
        metric = self.task.select_metric
        chosen = pick(runs, metric)
        if not math.isfinite(final_value(chosen, metric)):
            return None
        route = chosen.get("adamw_lr_factor")
        line = [r["lr_factor"] for r in runs if r.get("adamw_lr_factor") == route]
        if math.isclose(chosen["lr_factor"], max(line)):
            return max(line) * step, route, 1
        if math.isclose(chosen["lr_factor"], min(line)):
            return min(line) / step, route, -1
        return None

    def _one(
        self,
        racer: Racer,
        factor: float,
        route: float | None,
        seed: int,
        phase: str,
        extension: int,
    ) -> dict[str, Any]:
        task, entry, bar = self.task, self.entry, self.bar
        done = self.done.get(_run_key(racer.name, phase, factor, route, seed))
        if done is not None and math.isclose(done["lr_center"], racer.lr):
            _Tick(bar, task.steps, entry.cost[racer.name]).finish()
            return done
        lr = racer.lr * factor
        adamw_lr = (
            _ratio_adamw_lr(racer, lr)
            if route is None or self.adamw_lr is None
            else self.adamw_lr * route
        )
        if bar is not None:
            shown = "" if adamw_lr is None else f" adamw_lr={adamw_lr:.3g}"
            bar.set_description_str(f"{task.name} {racer.name} lr={lr:.3g}{shown} seed={seed}")
        head = {
            "schema": records.SCHEMA_VERSION,
            "race": self.race_info,
            "task": task.name,
            "task_config": entry.described,
            "racer": racer.name,
            "peer": racer.peer,
            "library": racer.library,
            "mirrors": racer.mirrors,
            "phase": phase,
            "lr": lr,
            "lr_factor": factor,
            "lr_center": racer.lr,
            "adamw_lr": adamw_lr,
            "adamw_lr_factor": route,
            "extension": extension,
            "seed": seed,
            "steps": task.steps,
            "target": task.target.as_dict(),
            "select_metric": task.select_metric,
            "error": None,
            "env": self.env,
        }
        tick = _Tick(bar, task.steps, entry.cost[racer.name])
        try:
            measured = run(task, racer, lr, seed, adamw_lr=adamw_lr, progress=tick)
        except (RuntimeError, ValueError, TypeError, FloatingPointError) as err:
            # A library that crashes on this problem loses the run, not the whole race.
            measured = _failed(f"{type(err).__name__}: {err}")
        tick.finish()
        record = records.RaceRecord(
            **(head | measured),
            finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        ).as_dict()
        records.append(self.path, record)
        return records.plain(record)


def _run_key(
    racer: str, phase: str, factor: float, route: float | None, seed: int
) -> tuple[str, str, float, float | None, int]:
    """Identifies a run within a task (factors rounded: they are products of floats)."""
    return racer, phase, round(factor, 9), None if route is None else round(route, 9), seed


def _failed(error: str) -> dict[str, Any]:
    """The measured part of a record for a run that raised."""
    return {
        "recipe": [],
        "curve": [],
        "final": {},
        "steps_done": 0,
        "steps_to_target": None,
        "time_to_target_s": None,
        "diverged": True,
        "error": error,
        "timing": dict.fromkeys(records.TIMING_KEYS),
        "memory": dict.fromkeys(records.MEMORY_KEYS),
    }


def _progress_bar(total: float) -> Any:
    """A tqdm bar counting estimated seconds of work, so its ETA holds across tasks whose steps
    cost 50x different amounts."""
    tqdm = require("tqdm", "the race's progress bar").tqdm
    interval = 0.1 if sys.stderr.isatty() else 5.0  # keep logs short when not on a terminal
    return tqdm(
        total=total,
        dynamic_ncols=True,
        smoothing=0.05,
        mininterval=interval,
        file=sys.stderr,
        bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
    )


class _Tick:
    """Advances the progress bar by a run's estimated cost, spread over its steps; ``finish``
    adds what a diverged or failed run did not take, so the ETA stays right."""

    def __init__(self, bar: Any, steps: int, cost: float) -> None:
        self.bar, self.steps, self.cost = bar, steps, cost
        self.per_step, self.done = cost / steps, 0.0

    def _advance(self, amount: float) -> None:
        amount = min(amount, self.cost - self.done, self.bar.total - self.bar.n)
        if amount > 0:
            self.bar.update(amount)
            self.done += amount

    def __call__(self, step: int, loss: float) -> None:
        if self.bar is None:
            return
        self._advance(self.per_step)
        if step % 10 == 0 or step == self.steps:
            self.bar.set_postfix_str(f"step {step}/{self.steps} loss {loss:.4g}", refresh=False)

    def finish(self) -> None:
        if self.bar is not None:
            self._advance(self.cost - self.done)
