"""Overhead of the non-finite gradient check (one max-abs reduction) relative to a full step.

Shapes: the GPT-like set of issue 7 (6 layers of d=512: 1536x512, 512x512, 2048x512, 512x2048;
24 hidden matrices, 18.9M parameters). Usage: python benchmarks/nonfinite_check_overhead.py
"""

from __future__ import annotations

import statistics
import time

import torch

import orthoptim
from orthoptim.optim import ChainOptimizer


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    shapes = [(1536, 512), (512, 512), (2048, 512), (512, 2048)] * 6
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    grads = [p.grad for p in params]
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{sum(p.numel() for p in params) / 1e6:.1f}M params"
    )
    check = median_ms(lambda: ChainOptimizer._all_finite(grads), 20)
    for name in ("muon", "adamw"):
        opt = orthoptim.build(name, params)
        opt.step()  # warm-up, state allocation
        step = median_ms(opt.step, 5 if name == "muon" else 20)
        print(
            f"{name:6s} step {step:8.1f} ms (median)  check {check:6.2f} ms  "
            f"= {100 * check / step:5.2f}% of the step"
        )


if __name__ == "__main__":
    main()
