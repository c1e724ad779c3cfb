"""The race: an equal lr sweep per racer, the lr picked on validation, then seeds at that lr.

Protocol, per task and racer (every racer gets the same budget):

1. Sweep: the log-spaced factors ``lr_factors(points, span)`` (``x1/span ... x span``) times the
   racer's registry default lr, one run each at seed 0.
2. Pick: the lr whose run ends with the lowest ``task.select_metric`` on held-out data
   (diverged runs rank last; a tie goes to the factor nearer 1).
3. Seeds: seeds ``1 .. seeds-1`` at the picked lr; the sweep's seed-0 run at that lr is the
   first seed (runs are deterministic given lr and seed, so re-running it would repeat it).

Runs are interleaved (all racers at one grid point, then the next), so a change in machine load
spreads over every racer instead of hitting one. Each run is appended to ``records.jsonl`` as
soon as it ends; the report is rendered from that file alone.
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
from typing import Any

import torch

from orthoptim.bench import records, report, tasks
from orthoptim.bench._optional import require
from orthoptim.bench.peers import peer_racers
from orthoptim.bench.racers import Racer, spec_racers
from orthoptim.bench.runner import run, train_step
from orthoptim.bench.selection import pick


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceConfig:
    """What to race and how.

    Args:
        tasks: task names (``orthoptim.bench.tasks.TASKS``).
        specs: registry name patterns (all when ``None``); ``adamw`` always races as baseline.
        peers: race installed peers of the selected algorithms.
        lr_points: points of the lr grid.
        lr_span: the grid spans ``x1/lr_span ... x lr_span`` the default lr.
        seeds: seeds at the picked lr (the sweep's seed-0 run is the first).
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
    quick: bool = False
    data: str | None = None
    steps: int | None = None
    out: Path | None = None
    progress: bool = True
    threads: int | None = 1
    command: str = ""


QUICK = {"lr_points": 3, "seeds": 2}
"""``--quick`` defaults where the user gives none: 3 lr points, 2 seeds."""


def _make_tasks(config: RaceConfig) -> list[tasks.Task]:
    if config.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {config.seeds}")
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


def _racers(config: RaceConfig) -> tuple[list[Racer], dict[str, str], list[str]]:
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
        opt = racer.make(model, racer.lr)
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
    """Run the race, write ``records.jsonl``, ``report.md`` and plots to the output folder, print
    the headline table, and return the folder."""
    require("matplotlib", "the race's plots")  # fail now, not after the race
    if config.progress:
        require("tqdm", "the race's progress bar")
    task_list = _make_tasks(config)
    racers, aliases, notes = _racers(config)
    factors = lr_factors(config.lr_points, config.lr_span)
    out = _out_dir(config.out)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    bar = None
    try:
        entries, skipped = _enter(task_list, racers)
        race_info = {
            "id": out.name,
            "command": config.command or shlex.join(["orthoptim", *sys.argv[1:]]),
            "lr_factors": factors,
            "lr_span": config.lr_span,
            "seeds": config.seeds,
            "quick": config.quick,
            "tasks": [t.name for t in task_list],
            "racers": [r.name for r in racers],
            "aliases": aliases,
            "skipped": skipped,
            "notes": notes,
        }
        runs_per_racer = len(factors) + config.seeds - 1
        total = runs_per_racer * sum(sum(e.cost.values()) for e in entries)
        bar = _progress_bar(total) if config.progress else None
        env = records.environment()
        for entry in entries:
            _race_task(entry, factors, config.seeds, race_info, env, out / records.RECORDS, bar)
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    print(report.render(out))
    return out


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


def _race_task(
    entry: Entry,
    factors: Sequence[float],
    seeds: int,
    race_info: dict[str, Any],
    env: dict[str, Any],
    path: Path,
    bar: Any,
) -> None:
    """Sweep every racer over ``factors`` (interleaved), pick each one's lr, then run seeds."""
    task = entry.task

    def one(racer: Racer, factor: float, seed: int, phase: str) -> dict[str, Any]:
        lr = racer.lr * factor
        if bar is not None:
            bar.set_description_str(f"{task.name} {racer.name} lr={lr:.3g} seed={seed}")
        record = {
            "schema": records.SCHEMA_VERSION,
            "race": race_info,
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
            "seed": seed,
            "steps": task.steps,
            "target": task.target.as_dict(),
            "select_metric": task.select_metric,
            "error": None,
            "env": env,
        }
        tick = _Tick(bar, task.steps, entry.cost[racer.name])
        try:
            record |= run(task, racer, lr, seed, progress=tick)
        except (RuntimeError, ValueError, TypeError, FloatingPointError) as err:
            # A library that crashes on this problem loses the run, not the whole race.
            record |= _failed(f"{type(err).__name__}: {err}")
        tick.finish()
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        record["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        records.append(path, record)
        return records.plain(record)

    sweeps: dict[str, list[dict[str, Any]]] = {r.name: [] for r in entry.racers}
    for factor in factors:
        for racer in entry.racers:
            sweeps[racer.name].append(one(racer, factor, 0, "sweep"))
    chosen = {name: pick(runs, task.select_metric)["lr_factor"] for name, runs in sweeps.items()}
    for seed in range(1, seeds):
        for racer in entry.racers:
            one(racer, chosen[racer.name], seed, "seed")


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
