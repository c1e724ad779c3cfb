"""MKOR's and MKOR-H's step against Muon's, in one process, interleaved round by round.

On the 24 default matrices of ``orthoptim speed`` as bias-free ``nn.Linear`` weights with the
capture's hooks (``bench.speed.hooked``; the forward and backward that fill the hooks run
untimed before each step), times ``muon``, and ``mkor`` / ``mkor_h`` with each
``matmul_dtype``; with ``--before REV``, also the MKOR transforms of git revision ``REV``
(their ``direction`` and ``apply`` swapped in), so that a change is measured beside what it
replaced. Reports each entrant's median step and the median over rounds of its step over that
round's Muon step. ``--clock cpu`` times process CPU time (with ``--threads 1``, the least
disturbed by other processes on a shared machine).

Usage: python benchmarks/mkor_step.py [--rounds 7] [--threads 2] [--clock wall|cpu]
       [--before 43d029d]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from orthoptim import registry
from orthoptim.bench.speed.benchmark import LAYER_SHAPES, LAYERS
from orthoptim.bench.speed.hooked import BATCH
from orthoptim.functional.kron import MATMUL_DTYPES
from orthoptim.transforms import mkor


def hooked(name: str, options: dict[str, str]) -> tuple[Callable[[], None], Callable[[], None]]:
    torch.manual_seed(0)
    params = [torch.randn(*s) * 0.02 for s in LAYER_SHAPES * LAYERS]
    gen = torch.Generator().manual_seed(1)
    layers, inputs, out_grads = nn.ModuleList(), [], []
    for p in params:
        rows, cols = p.shape
        layer = nn.Linear(cols, rows, bias=False)
        layer.weight = nn.Parameter(p)
        layers.append(layer)
        inputs.append(torch.randn(BATCH, cols, generator=gen))
        out_grads.append(torch.randn(BATCH, rows, generator=gen) / BATCH)
    opt = registry.build(name, layers, overrides={"*": "hidden"}, **options)

    def prepare() -> None:
        for layer, x, g in zip(layers, inputs, out_grads, strict=True):
            layer(x).backward(g)

    return prepare, opt.step


def muon() -> tuple[Callable[[], None], Callable[[], None]]:
    torch.manual_seed(0)
    params = [(torch.randn(*s) * 0.02).requires_grad_() for s in LAYER_SHAPES * LAYERS]
    grads = [torch.randn_like(p) * 0.01 for p in params]
    opt = registry.build("muon", params)

    def prepare() -> None:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()

    return prepare, opt.step


def transforms_at(rev: str) -> tuple[Callable, Callable]:
    """``MKORPrecondition.direction`` and ``MKORHybridPrecondition.apply`` of revision ``rev``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/orthoptim/transforms/mkor.py"],
        check=True, capture_output=True, text=True, cwd=Path(__file__).parent,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "mkor_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("mkor_before", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["mkor_before"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.MKORPrecondition.direction, module.MKORHybridPrecondition.apply


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--before", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    now = (mkor.MKORPrecondition.direction, mkor.MKORHybridPrecondition.apply)
    before = transforms_at(args.before) if args.before else None
    entrants: dict[str, tuple[Callable[[], None], Callable[[], None], tuple]] = {
        "muon": (*muon(), now)
    }
    for name in ("mkor", "mkor_h"):
        if before is not None:
            entrants[f"{name} ({args.before})"] = (*hooked(name, {}), before)
        for dtype in MATMUL_DTYPES:
            entrants[f"{name} {dtype}"] = (*hooked(name, {"matmul_dtype": dtype}), now)
    times: dict[str, list[float]] = {n: [] for n in entrants}
    for r in range(args.rounds + 1):  # round 0 warms up
        for n, (prepare, step, code) in entrants.items():
            mkor.MKORPrecondition.direction, mkor.MKORHybridPrecondition.apply = code
            prepare()
            t = clock()
            step()
            if r:
                times[n].append(clock() - t)
    mkor.MKORPrecondition.direction, mkor.MKORHybridPrecondition.apply = now
    print(f"{args.rounds} rounds, {args.threads} threads, {args.clock} clock")
    for n, ts in times.items():
        ratio = statistics.median(t / m for t, m in zip(ts, times["muon"], strict=True))
        print(f"{n:24s} {1e3 * statistics.median(ts):8.1f} ms  x muon {ratio:5.2f}")


if __name__ == "__main__":
    main()
