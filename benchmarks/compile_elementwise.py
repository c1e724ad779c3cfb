"""Does ``torch.compile`` pay for the element-wise work of a Muon step on this CPU? (issue 7)

The Muon step's matrix products run at the machine's matmul rate; what it adds is element-wise:
before the Newton-Schulz products the momentum EMA, the Nesterov blend, the cast to bfloat16 and
the Frobenius pre-normalisation; after them the cast back, the shape scale and the parameter
update. This times that work eagerly (the ops ``Momentum``, ``newton_schulz`` and the shell
run) and compiled by ``torch.compile`` (inductor, ``dynamic=False``), interleaved round by round
on the 24 default matrices of ``orthoptim speed``, and reports the compile time and how far the
compiled results are from the eager ones.

Usage: python benchmarks/compile_elementwise.py OUT.json [--rounds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from orthoptim.bench.speed.benchmark import LAYER_SHAPES, LAYERS
from orthoptim.bench.speed.measure import fixed_params

BETA, EPS, LR = 0.95, 1e-7, 0.02


def before_products(g: Tensor, m: Tensor) -> Tensor:
    """Momentum EMA (in place), Nesterov blend, bfloat16 cast, Frobenius pre-normalisation."""
    m.lerp_(g, 1.0 - BETA)
    x = torch.lerp(g, m, BETA).to(torch.bfloat16)
    return x.div_(torch.linalg.vector_norm(x) + EPS)


def after_products(p: Tensor, factor: Tensor, scale: float) -> None:
    """Cast back to float32, shape scale, ``p <- p - lr u`` (in place)."""
    p.add_(factor.to(p.dtype).mul_(scale), alpha=-LR)


def work(fns, params, grads, moments, factors) -> None:
    before, after = fns
    for p, g, m, f in zip(params, grads, moments, factors, strict=True):
        before(g, m)
        after(p, f, math.sqrt(max(1.0, p.shape[0] / p.shape[1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = LAYER_SHAPES * LAYERS
    params, grads = fixed_params(shapes, 0)
    factors = [torch.randn(s).to(torch.bfloat16) for s in shapes]
    runs = {
        "eager": ((before_products, after_products), [p.clone() for p in params]),
        "compiled": (
            (
                torch.compile(before_products, dynamic=False),
                torch.compile(after_products, dynamic=False),
            ),
            [p.clone() for p in params],
        ),
    }
    moments = {name: [torch.zeros_like(p) for p in params] for name in runs}
    start = time.perf_counter()
    work(runs["compiled"][0], runs["compiled"][1], grads, moments["compiled"], factors)
    compile_s = time.perf_counter() - start
    work(runs["eager"][0], runs["eager"][1], grads, moments["eager"], factors)
    # Differences after one identical call each (the compiled run's first call above).
    g, m_eager, m_comp = grads[0], torch.zeros_like(grads[0]), torch.zeros_like(grads[0])
    x_eager = before_products(g, m_eager)
    x_comp = runs["compiled"][0][0](g, m_comp)
    diffs = {
        "momentum_max_abs": (m_eager - m_comp).abs().max().item(),
        "momentum_bitwise_equal": torch.equal(m_eager, m_comp),
        "normalised_bf16_max_abs": (x_eager.float() - x_comp.float()).abs().max().item(),
        "normalised_bf16_bitwise_equal": torch.equal(x_eager, x_comp),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (fns, ps) in runs.items():
            t0 = time.perf_counter()
            work(fns, ps, grads, moments[name], factors)
            times[name].append(time.perf_counter() - t0)
    median_ms = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    record = {
        "command": "python benchmarks/compile_elementwise.py "
        + str(args.out)
        + f" --rounds {args.rounds} --threads {args.threads}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "matrices": len(shapes),
        "params": sum(p.numel() for p in params),
        "rounds": args.rounds,
        "compile_s": compile_s,
        "median_ms": median_ms,
        "times_ms": {name: [t * 1e3 for t in ts] for name, ts in times.items()},
        "compiled_over_eager": median_ms["compiled"] / median_ms["eager"],
        **diffs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(
        f"element-wise work of a Muon step, {len(shapes)} matrices: eager "
        f"{median_ms['eager']:.2f} ms, compiled {median_ms['compiled']:.2f} ms "
        f"({record['compiled_over_eager']:.2f}x), compile {compile_s:.1f} s; momentum bitwise "
        f"equal: {diffs['momentum_bitwise_equal']}, bf16 input bitwise equal: "
        f"{diffs['normalised_bf16_bitwise_equal']}"
    )


if __name__ == "__main__":
    main()
