"""Hand-made race records with known answers, for the report and schema tests."""

from __future__ import annotations

from typing import Any

from orthoptim.bench.arena import records

FACTORS = [0.5, 1.0, 2.0]
TARGET = {"metric": "val_loss", "value": 1.0, "mode": "min"}


def record(
    racer: str,
    *,
    factor: float = 1.0,
    seed: int = 0,
    phase: str = "sweep",
    final: float | None = 0.5,
    steps_to_target: int | None = 10,
    seconds_per_step: float = 0.01,
    peer: bool = False,
    task: str = "toy",
    diverged: bool = False,
) -> dict[str, Any]:
    """One schema-valid record; the curve falls linearly from 2.0 to ``final``."""
    end = 2.0 if final is None else final
    curve = [
        {
            "step": s,
            "time_s": s * seconds_per_step,
            "train_loss": None if s == 0 else 2.0,
            "val_loss": 2.0 + (end - 2.0) * s / 20,
        }
        for s in range(0, 21, 5)
    ]
    return records.plain(
        {
            "schema": records.SCHEMA_VERSION,
            "race": {
                "id": "synthetic",
                "command": "orthoptim race --synthetic",
                "lr_factors": FACTORS,
                "lr_span": 2.0,
                "seeds": 3,
                "quick": False,
                "tasks": [task],
                "racers": ["adamw", "muon"],
                "aliases": {"muon_adamw": "muon"},
                "skipped": [{"task": task, "racer": "torch:muon", "reason": "2-D only"}],
                "notes": ["a note"],
            },
            "task": task,
            "task_config": {"model": "Toy()", "steps": 20, "eval_every": 5, "source": "made up"},
            "racer": racer,
            "peer": peer,
            "library": "orthoptim 0.1.0",
            "mirrors": racer.split(":")[-1],
            "phase": phase,
            "lr": 0.01 * factor,
            "lr_factor": factor,
            "lr_center": 0.01,
            "seed": seed,
            "steps": 20,
            "target": TARGET,
            "select_metric": "val_loss",
            "recipe": [{"class": "X", "groups": [{"lr": 0.01 * factor}]}],
            "curve": curve,
            "final": {"val_loss": None if diverged else final},
            "steps_done": 20,
            "steps_to_target": steps_to_target,
            "time_to_target_s": None
            if steps_to_target is None
            else steps_to_target * seconds_per_step,
            "diverged": diverged,
            "error": None,
            "timing": {
                "train_s": 20 * seconds_per_step,
                "wall_s": 1.0,
                "step_s_median": seconds_per_step,
                "opt_step_s_median": seconds_per_step / 4,
                "opt_share": 0.25,
            },
            "memory": {"state_bytes": 1024, "peak_rss_bytes": 2**20},
            "env": {
                "orthoptim": "0.1.0",
                "git_sha": "0123456789abcdef",
                "torch": "2.13.0",
                "python": "3.11.7",
                "threads": 1,
                "cpu": "Test CPU",
            },
            "finished_at": "2026-11-25T00:00:00+00:00",
        }
    )


def race() -> list[dict[str, Any]]:
    """AdamW and Muon on one task. AdamW: best lr x1; seeds reach the target in 10, 12, 14 steps
    at 0.01 s/step. Muon: best lr x2; seeds reach it in 5, 6, 7 steps at 0.02 s/step, so its
    time ratios are exactly 1.0 (steps ratios 0.5)."""
    recs = []
    for f, final in zip(FACTORS, (0.8, 0.5, 0.9), strict=True):
        recs.append(record("adamw", factor=f, final=final, steps_to_target=10))
    for f, final in zip(FACTORS, (0.9, 0.6, 0.4), strict=True):
        recs.append(record("muon", factor=f, final=final, steps_to_target=5, seconds_per_step=0.02))
    for seed, (a, m) in enumerate(((12, 6), (14, 7)), start=1):
        recs.append(record("adamw", seed=seed, phase="seed", steps_to_target=a))
        recs.append(
            record(
                "muon",
                factor=2.0,
                seed=seed,
                phase="seed",
                final=0.4,
                steps_to_target=m,
                seconds_per_step=0.02,
            )
        )
    return recs
