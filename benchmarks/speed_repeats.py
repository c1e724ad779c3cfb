"""``orthoptim speed --spec muon adamw`` run several times in a row, and the spread of its ratios.

This machine is a shared 2-core VM whose speed changes from minute to minute, and not uniformly:
in some periods the 512-wide Newton-Schulz products run near the rate of the large probe product,
in others about 15% below it, while memory-bound kernels (fused AdamW) change the other way. One
run's ratios describe one such period; this gives the distribution over ``--runs`` consecutive
runs (each a fresh process running ``orthoptim speed --spec muon adamw --out OUT_DIR/run-NN``,
as a user would: the transient-memory measurement at the end of a run changes the C allocator's
settings for the rest of its process) and their medians.

Usage: python benchmarks/speed_repeats.py OUT_DIR [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from orthoptim.bench.speed import report as speed_report

ROWS: tuple[tuple[str, str], ...] = (
    ("orthoptim:muon", "ratio_floor"),
    ("orthoptim:muon", "ratio_fastest_peer"),
    ("torch:muon", "ratio_floor"),
    ("orthoptim:adamw", "ratio_fastest_peer"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    per_run: list[dict[str, float]] = []
    for index in range(1, args.runs + 1):
        folder = args.out / f"run-{index:02d}"
        command = ["speed", "--spec", "muon", "adamw", "--out", str(folder)]
        subprocess.run([sys.executable, "-m", "orthoptim", *command], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        by_name = {r["name"]: r for r in speed_report.read(folder)}
        row = {f"{name} {key}": by_name[name][key] for name, key in ROWS}
        row["orthoptim:muon step_ms"] = by_name["orthoptim:muon"]["step_ms_median"]
        row["floor_ms"] = by_name["orthoptim:muon"]["run"]["floor_ms"]
        per_run.append(row)
        print(f"run {index:2d}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    medians = {key: statistics.median(r[key] for r in per_run) for key in per_run[0]}
    spread = {key: [min(r[key] for r in per_run), max(r[key] for r in per_run)] for key in medians}
    summary = {"runs": args.runs, "per_run": per_run, "median": medians, "min_max": spread}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for key, value in medians.items():
        print(f"median over {args.runs} runs: {key} {value:.3f} (range {spread[key][0]:.3f}-"
              f"{spread[key][1]:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
