"""The race's final: ``lm_medium`` (a GPT of a few million parameters) for the small tasks' best.

Who: the best ``FINALISTS`` of our racers by their median, over the small tasks, of the median
time to target relative to AdamW (a task whose target a racer missed counts as infinitely slow),
plus ``adamw``, ``muon`` and every peer that raced. Where: each finalist's lr grid is centred on
the lr it picked on the small ``lm`` task (its registry default where it did not race ``lm``),
``FINAL_LR_POINTS`` points spanning ``x1/FINAL_LR_SPAN .. x FINAL_LR_SPAN``, with the race's edge
rule and AdamW-route rule (``orthoptim.bench.arena.protocol``). The final's records go into the same
``records.jsonl`` as the small tasks, so one report holds every task; run again on the same
folder, an interrupted final resumes (``task_race.TaskRace`` reads its recorded runs back).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from orthoptim.bench.arena import records, report, sweep, tasks
from orthoptim.bench.arena.protocol import RaceConfig
from orthoptim.bench.arena.racers import BASELINE, Racer
from orthoptim.bench.arena.summary import Row, baseline, ratio, summarize

FINALISTS = 5
FINAL_LR_POINTS = 3
FINAL_LR_SPAN = 2.0
FINAL_SEEDS = 2
ALWAYS: tuple[str, ...] = (BASELINE, "muon")


def standing(summary: Mapping[str, Sequence[Row]], small: Sequence[str]) -> dict[str, float]:
    """``{racer: median over the small tasks of its median time ratio to AdamW}`` for our own
    racers (``inf`` where it missed a target AdamW reached)."""
    per_racer: dict[str, list[float]] = {}
    for task in small:
        rows = summary.get(task, [])
        base = baseline(rows)
        for row in rows:
            if row.peer:
                continue
            r = ratio(row, base, "time")
            if r is None or r.median is None:
                continue
            per_racer.setdefault(row.racer, []).append(r.median)
    return {name: statistics.median(values) for name, values in per_racer.items()}


def finalists(summary: Mapping[str, Sequence[Row]], small: Sequence[str]) -> list[str]:
    """``ALWAYS``, then the best ``FINALISTS`` others by ``standing``, then the peers."""
    ranked = sorted(standing(summary, small).items(), key=lambda kv: (kv[1], kv[0]))
    best = [name for name, value in ranked if name not in ALWAYS and math.isfinite(value)]
    peers = list(dict.fromkeys(r.racer for rows in summary.values() for r in rows if r.peer))
    return [*ALWAYS, *best[:FINALISTS], *peers]


def centred(racers: Sequence[Racer], summary: Mapping[str, Sequence[Row]]) -> list[Racer]:
    """Each racer with its grid centre moved to the lr it picked on ``lm``."""
    picked = {row.racer: row.lr for row in summary.get("lm", [])}
    return [dataclasses.replace(r, lr=picked.get(r.name, r.lr)) for r in racers]


def run_final(directory: Path, config: RaceConfig) -> Path:
    """Race ``lm_medium`` with the finalists of the race in ``directory``, appending to its
    ``records.jsonl``, and re-render its report."""
    recs = records.read(Path(directory) / records.RECORDS)
    summary = summarize(recs)
    small = [t for t in summary if t not in tasks.FINAL]
    if not small:
        raise ValueError(f"{directory} holds no small-task results to choose finalists from")
    names = finalists(summary, small)
    all_racers, _, notes = sweep.select_racers(
        dataclasses.replace(config, specs=tuple(n for n in names if ":" not in n))
    )
    chosen = [r for r in all_racers if r.name in names]
    final_config = dataclasses.replace(
        config,
        lr_points=FINAL_LR_POINTS,
        lr_span=FINAL_LR_SPAN,
        seeds=min(config.seeds, FINAL_SEEDS),
        out=Path(directory),
    )
    task = tasks.make("lm_medium", quick=config.quick, steps=config.steps)
    sweep.run_more(Path(directory), [task], centred(chosen, summary), notes, final_config)
    print(report.render(Path(directory)))
    return Path(directory)
