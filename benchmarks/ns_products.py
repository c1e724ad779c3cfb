"""Newton-Schulz on the 24 default matrices: one matrix at a time against same-shape batches.

Times, interleaved round by round, (1) the large-product probe that ``orthoptim speed`` takes its
FLOP floor from, (2) ``newton_schulz`` (5 quintic iterations, bfloat16) on each of the 24 hidden
matrices of ``orthoptim speed``'s default set in turn, (3) the same on the matrices stacked by
shape (four batches of six, ``bmm``), and (4) orthoptim's whole ``muon`` step, and reports each
median over the probe's floor (the matrices' matmul FLOPs at the probe's median rate).

Usage: python benchmarks/ns_products.py OUT.json [--rounds 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import orthoptim
from orthoptim.bench.speed.benchmark import LAYER_SHAPES, LAYERS
from orthoptim.bench.speed.measure import MatmulProbe, fixed_params, set_grads
from orthoptim.functional import newton_schulz
from orthoptim.functional.coefficients import resolve_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = LAYER_SHAPES * LAYERS
    params, grads = fixed_params(shapes, 0)
    set_grads(params, grads)
    schedule = resolve_preset("keller_quintic", 2, 2).schedule(5)
    matrices = [g.to(torch.bfloat16) for g in grads]
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for m in matrices:
        by_shape.setdefault(tuple(m.shape), []).append(m)
    batches = [torch.stack(ms) for ms in by_shape.values()]
    flops = sum(5 * (4 * min(s) ** 2 * max(s) + 2 * min(s) ** 3) for s in shapes)
    probe = MatmulProbe(torch.bfloat16, 2048, 13)
    muon = orthoptim.build("muon", params)

    entries = {
        "probe": probe.step,
        "one_at_a_time": lambda: [newton_schulz(m, schedule) for m in matrices],
        "batched_by_shape": lambda: [newton_schulz(b, schedule) for b in batches],
        "muon_step": muon.step,
    }
    times: dict[str, list[float]] = {name: [] for name in entries}
    for round_ in range(args.rounds + 1):  # the first round warms up
        for name, run in entries.items():
            start = time.perf_counter()
            run()
            if round_:
                times[name].append(time.perf_counter() - start)
    median_s = {name: statistics.median(ts) for name, ts in times.items()}
    floor_s = flops / (probe.flops / median_s["probe"])
    record = {
        "command": f"python benchmarks/ns_products.py {args.out} --rounds {args.rounds} "
        f"--threads {args.threads}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "ns_flops": flops,
        "probe_rate_gflops": probe.flops / median_s["probe"] / 1e9,
        "floor_ms": floor_s * 1e3,
        "median_ms": {name: s * 1e3 for name, s in median_s.items()},
        "x_floor": {name: s / floor_s for name, s in median_s.items() if name != "probe"},
        "times_ms": {name: [t * 1e3 for t in ts] for name, ts in times.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(
        f"floor {record['floor_ms']:.1f} ms; x floor: "
        + ", ".join(f"{name} {ratio:.3f}" for name, ratio in record["x_floor"].items())
    )


if __name__ == "__main__":
    main()
