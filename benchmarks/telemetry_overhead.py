"""What telemetry costs a Muon step (``build(..., telemetry_every=N)``): muon with telemetry off,
with every step measured (``telemetry_every=1``) and with ``telemetry_every=100`` (whose timed
steps are unmeasured ones), interleaved rounds, 2 threads, on ``orthoptim speed``'s default
matrices (6 layers of 1536x512, 512x512, 2048x512, 512x2048). Every N steps costs
``(measured / off - 1) / N`` of a muon step; prints medians and those ratios as JSON.

    python benchmarks/telemetry_overhead.py [--layers N] [--rounds N] [--device D] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from script_record import report, run_info

from orthoptim import ChainOptimizer, build
from orthoptim.bench.speed.benchmark import LAYER_SHAPES, LAYERS

WARMUP = 2


def make(every: int | None, layers: int = LAYERS, device: str = "cpu") -> ChainOptimizer:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in list(LAYER_SHAPES) * layers:
        p = torch.randn(shape, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(device)
        params.append(p)
    return build("muon", params, telemetry_every=every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="append the result to OUT/records.jsonl")
    parser.add_argument("--layers", type=int, default=LAYERS, help=f"layers (default {LAYERS})")
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds (default 12)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    args = parser.parse_args()
    torch.set_num_threads(2)
    entrants = {
        "off": make(None, args.layers, args.device),
        "every step": make(1, args.layers, args.device),
        "every 100, unmeasured": make(100, args.layers, args.device),
    }
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None
    times: dict[str, list[float]] = {name: [] for name in entrants}
    for round_ in range(WARMUP + args.rounds):
        for name, opt in entrants.items():
            sync()
            start = time.perf_counter()
            opt.step()
            if name == "every step":
                opt.telemetry()  # the host read a logger would make (a sync)
            sync()
            if round_ >= WARMUP:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    measured = medians["every step"] / medians["off"]
    result = {
        "run": run_info(),
        "layers": args.layers,
        "device": args.device,
        "median_ms": medians,
        "ratio_to_off": {name: m / medians["off"] for name, m in medians.items()},
        "overhead_every_100": (measured - 1) / 100,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
