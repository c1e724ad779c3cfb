"""Round-off sensitivity of each distributable optimizer: how far 3 steps of the distributed
tests' tiny model move when every gradient entry is perturbed by 1e-7 of its magnitude
(g + 1e-7 |g| N(0, 1), fixed seed), and how far the eager chain is from the fused AdamW kernel.
Max abs parameter difference, element-wise routes / matrix routes, as tests/distributed compares.

    python -m tests.distributed.sensitivity      (from the repository root)

docs/distributed.md ("Checkpoints") puts its output beside the checkpoint tests' resume
differences.
"""

from __future__ import annotations

import torch

from orthoptim.registry import build
from tests.distributed import workers as W
from tests.distributed.test_distributed import DISTRIBUTABLE, compare


def run(name: str, perturbation: float, fast_paths: bool = True) -> dict[str, torch.Tensor]:
    m = W.model()
    opt = build(name, m, fast_paths=fast_paths)
    g = torch.Generator().manual_seed(7)
    for step in range(3):
        W.reference_grads(m, step, 1)
        for p in m.parameters():
            noise = torch.randn(p.grad.shape, generator=g)
            p.grad = p.grad + perturbation * p.grad.abs() * noise
        opt.step()
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def main() -> None:
    torch.set_num_threads(1)  # as the test ranks
    print(f"{'optimizer':14s} {'sensitivity (elem/matrix)':>26s} {'eager vs fused':>20s}")
    for name in DISTRIBUTABLE:
        base = run(name, 0.0)
        e, m = compare(name, run(name, 1e-7), base)
        fe, fm = compare(name, run(name, 0.0, fast_paths=False), base)
        print(f"{name:14s} {e:12.1e} / {m:9.1e} {fe:10.1e} / {fm:7.1e}")


if __name__ == "__main__":
    main()
