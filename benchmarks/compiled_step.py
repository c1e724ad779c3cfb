"""The step of ``adamw`` and ``muon`` three ways, interleaved rounds, 2 threads, on
``orthoptim speed``'s default shapes (muon: the 24 hidden matrices; adamw: those and the 8192x512
embedding, 23.1M parameters): the default eager step, the ``capturable=True`` eager step (lr a
tensor), and that step under ``torch.compile(opt.step, fullgraph=True)``. ``nonfinite="off"``
throughout (the compiled graph has no host read). Prints medians, ratios to the default and the
compile time as JSON.

    python benchmarks/compiled_step.py [--out FOLDER]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from script_record import report, run_info

import orthoptim
from orthoptim.bench.speed.benchmark import ADAMW_EXTRA, LAYER_SHAPES, LAYERS

WARMUP, ROUNDS = 3, 10


def params(name: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = list(LAYER_SHAPES) * LAYERS + (list(ADAMW_EXTRA) if name == "adamw" else [])
    out = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).requires_grad_()
        p.grad = torch.randn(shape, generator=gen) * 0.01
        out.append(p)
    return out


def entrant(name: str, way: str) -> Callable[[], object]:
    lr = orthoptim.registry.get(name).lr
    capturable = way != "default"
    opt = orthoptim.build(
        name,
        params(name),
        lr=torch.tensor(lr) if capturable else lr,
        nonfinite="off",
        capturable=capturable,
    )
    return torch.compile(opt.step, fullgraph=True) if way == "compiled" else opt.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="append the result to OUT/records.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result: dict[str, object] = {"run": run_info()}
    for name in ("adamw", "muon"):
        steps = {way: entrant(name, way) for way in ("default", "capturable", "compiled")}
        start = time.perf_counter()
        steps["compiled"]()  # first step: state creation
        steps["compiled"]()  # second: the steady-state graph
        compile_s = time.perf_counter() - start
        times: dict[str, list[float]] = {way: [] for way in steps}
        for round_ in range(WARMUP + ROUNDS):
            for way, step in steps.items():
                begin = time.perf_counter()
                step()
                if round_ >= WARMUP:
                    times[way].append(time.perf_counter() - begin)
        medians = {way: statistics.median(ts) * 1e3 for way, ts in times.items()}
        result[name] = {
            "median_ms": medians,
            "ratio_to_default": {way: m / medians["default"] for way, m in medians.items()},
            "compile_s_first_two_steps": compile_s,
        }
    report(result, args.out)


if __name__ == "__main__":
    main()
