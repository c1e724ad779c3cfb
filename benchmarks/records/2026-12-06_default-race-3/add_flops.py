"""Add the per-step FLOPs (``orthoptim.bench.arena.flops``) to this race's records.

The runs of this race were written before the runner recorded ``flops``; both parts are
deterministic functions of the task's model and the racer's algorithm (matmul FLOPs of one
forward and backward pass, counted by torch's ``FlopCounterMode``; the optimizer's
``Transform.cost`` estimate), so they are computed here with the same functions the runner now
calls, on the same task configuration (checked against each record's ``task_config``), and
added to records that lack them. No measured field is touched.

    python benchmarks/records/2026-12-06_default-race-3/add_flops.py
"""

from __future__ import annotations

import json
from pathlib import Path

from orthoptim.bench.arena import records, tasks
from orthoptim.bench.arena.flops import model_step_flops, optimizer_step_flops

HERE = Path(__file__).resolve().parent


def main() -> None:
    path = HERE / records.RECORDS
    recs = records.read(path)
    cache: dict[tuple[str, str], dict[str, float | None]] = {}
    for rec in recs:
        if "flops" in rec or rec["error"]:
            continue
        key = (rec["task"], rec["mirrors"])
        if key not in cache:
            task = tasks.make(rec["task"], quick=rec["race"]["quick"])
            described = task.describe()
            for field in ("model", "steps", "batch_size", "context", "dim", "depth"):
                if field in described and described[field] != rec["task_config"].get(field):
                    raise ValueError(f"{rec['task']}: {field} differs from the record's")
            model, batch = task.model(0), next(task.batches(0))
            # One uncounted pass first: tasks build their problem instance lazily (the
            # quadratic's H), and the runner counts after training, when it exists.
            task.loss(model, batch).backward()
            model.zero_grad(set_to_none=True)
            cache[key] = {
                "model_step": model_step_flops(task, model, batch),
                "optimizer_step": optimizer_step_flops(rec["mirrors"], model),
            }
        rec["flops"] = cache[key]
    text = "".join(
        json.dumps(records.plain(r), allow_nan=False, sort_keys=True) + "\n" for r in recs
    )
    path.write_text(text, encoding="utf-8")
    records.read(path)  # still valid
    print(f"flops added to {sum(1 for r in recs if 'flops' in r)} of {len(recs)} records")


if __name__ == "__main__":
    main()
