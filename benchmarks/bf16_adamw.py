"""The bf16 AdamW step three ways: the eager chain one parameter at a time (``foreach=False,
fast_paths=False``, the CPU default before the fused kernel took 16-bit parameters), the eager
chain multi-tensor (``foreach=True, fast_paths=False``), and torch's fused kernel on float32
copies (``orthoptim.fused``), interleaved rounds, 2 threads, on ``orthoptim speed``'s default
23.1M-parameter set in bfloat16. Prints medians, ratios to the first and each step's transient
peak (``measure.transient_peak``) as JSON.

    python benchmarks/bf16_adamw.py [--out FOLDER]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from script_record import report, run_info

from orthoptim import ChainOptimizer
from orthoptim.bench.speed.benchmark import ADAMW_EXTRA, LAYER_SHAPES, LAYERS
from orthoptim.bench.speed.measure import transient_peak
from orthoptim.recipes import adamw

WARMUP, ROUNDS = 3, 10


def make(foreach: bool, fast_paths: bool) -> ChainOptimizer:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in list(LAYER_SHAPES) * LAYERS + list(ADAMW_EXTRA):
        p = torch.randn(shape, generator=gen).bfloat16().requires_grad_()
        p.grad = torch.randn(shape, generator=gen).bfloat16()
        params.append(p)
    return ChainOptimizer(
        params, adamw(), lr=1e-3, weight_decay=0.01, fast_paths=fast_paths, foreach=foreach
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="append the result to OUT/records.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(2)
    entrants = {
        "eager chain, one at a time": make(False, False),
        "eager chain, multi-tensor": make(True, False),
        "fused on float32 copies": make(True, True),
    }
    times: dict[str, list[float]] = {name: [] for name in entrants}
    for round_ in range(WARMUP + ROUNDS):
        for name, opt in entrants.items():
            start = time.perf_counter()
            opt.step()
            if round_ >= WARMUP:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    result = {
        "run": run_info(),
        "median_ms": medians,
        "ratio_to_one_at_a_time": {
            name: m / medians["eager chain, one at a time"] for name, m in medians.items()
        },
        "transient_peak_bytes": {name: transient_peak(opt.step) for name, opt in entrants.items()},
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
