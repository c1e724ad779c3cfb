"""One task's race (``TaskRace``): AdamW's sweep, everyone else's, the edge extensions, then
the seeds, each run appended to ``records.jsonl`` as it ends (the protocol:
``orthoptim.bench.arena.protocol``)."""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orthoptim.bench.arena import records, tasks
from orthoptim.bench.arena.progress import Tick
from orthoptim.bench.arena.protocol import (
    MAX_EXTENSIONS,
    ROUTE_FACTORS,
    RaceConfig,
    grid_step,
    ratio_adamw_lr,
)
from orthoptim.bench.arena.racers import BASELINE, Racer
from orthoptim.bench.arena.runner import run
from orthoptim.bench.arena.selection import final_value, pick


@dataclass(frozen=True, slots=True)
class Entry:
    """A task, its configuration record, the racers that can run it, and each one's estimated
    seconds per run (for the progress bar)."""

    task: tasks.Task
    described: dict[str, Any]
    racers: tuple[Racer, ...]
    cost: dict[str, float]


class TaskRace:
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
            Tick(bar, task.steps, entry.cost[racer.name]).finish()
            return done
        lr = racer.lr * factor
        adamw_lr = (
            ratio_adamw_lr(racer, lr)
            if route is None or self.adamw_lr is None
            else self.adamw_lr * route
        )
        if bar is not None:
            shown = "" if adamw_lr is None else f" adamw_lr={adamw_lr:.3g}"
            bar.set_description_str(f"{task.name} {racer.name} lr={lr:.3g}{shown} seed={seed}")
        head = self._head(racer, phase, lr, factor, route, adamw_lr, extension, seed)
        tick = Tick(bar, task.steps, entry.cost[racer.name])
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

    def _head(
        self,
        racer: Racer,
        phase: str,
        lr: float,
        factor: float,
        route: float | None,
        adamw_lr: float | None,
        extension: int,
        seed: int,
    ) -> dict[str, Any]:
        """A record's protocol fields (``records.RaceRecord``), before the measured part."""
        return {
            "schema": records.SCHEMA_VERSION,
            "race": self.race_info,
            "task": self.task.name,
            "task_config": self.entry.described,
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
            "steps": self.task.steps,
            "target": self.task.target.as_dict(),
            "select_metric": self.task.select_metric,
            "error": None,
            "env": self.env,
        }


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
