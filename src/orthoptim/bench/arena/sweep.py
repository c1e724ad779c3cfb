"""Running the race (``race``, ``run_race``, ``run_more``): select the racers, probe what
each run costs, then race every task (``orthoptim.bench.arena.task_race``) into
``records.jsonl`` and render the report. The protocol and its options:
``orthoptim.bench.arena.protocol``.
"""

from __future__ import annotations

import datetime as dt
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from orthoptim.bench.arena import records, report, tasks
from orthoptim.bench.arena.peers import peer_racers
from orthoptim.bench.arena.progress import progress_bar
from orthoptim.bench.arena.protocol import (
    MAX_EXTENSIONS,
    ROUTE_FACTORS,
    RaceConfig,
    check,
    lr_factors,
    ratio_adamw_lr,
)
from orthoptim.bench.arena.racers import Racer, spec_racers
from orthoptim.bench.arena.runner import train_step
from orthoptim.bench.arena.task_race import Entry, TaskRace
from orthoptim.bench.arena.tasks.base import Task
from orthoptim.bench.shared.optional import require


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
        opt = racer.make(model, racer.lr, ratio_adamw_lr(racer, racer.lr))
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


def race(config: RaceConfig) -> Path:
    """Run the race on ``config.tasks``, write ``records.jsonl``, ``report.md`` and plots to the
    output folder, print the headline table, and return the folder."""
    return run_race(_make_tasks(config), config)


def run_race(
    task_list: Sequence[Task], config: RaceConfig, racers: Sequence[Racer] | None = None
) -> Path:
    """The race on these tasks (built-in or a user's, ``orthoptim.bench.arena.api``) with the
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
        bar = progress_bar(total) if config.progress else None
        env = records.environment()
        for entry in entries:
            TaskRace(entry, factors, config, race_info, env, out / records.RECORDS, bar).run()
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()


def _route_of(entry: Entry, name: str) -> bool:
    return next(r for r in entry.racers if r.name == name).has_adamw_route


def runs_on(racer: Racer, task: tasks.Task) -> bool:
    """Whether ``racer`` races on ``task``: every racer on a user's task, and on a built-in
    task those whose ``tasks`` (``Spec.race_tasks``) name it or are ``None``."""
    builtin = task.name in tasks.TASKS + tasks.FINAL
    return racer.tasks is None or not builtin or task.name in racer.tasks


def _enter(
    task_list: Sequence[tasks.Task], racers: Sequence[Racer]
) -> tuple[list[Entry], list[dict[str, str]]]:
    """Per task, the racers that can run it (with their cost estimates), and the pairs skipped
    with the reason."""
    entries, skipped = [], []
    for task in task_list:
        cost = {}
        for racer in racers:
            if not runs_on(racer, task):
                reason = f"races only on {', '.join(racer.tasks or ())} (Spec.race_tasks)"
                skipped.append({"task": task.name, "racer": racer.name, "reason": reason})
                continue
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
