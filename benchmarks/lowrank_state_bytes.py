"""Optimizer-state bytes of FRUGAL and low-rank AdamW against AdamW on a 2-layer TinyGPT.

State bytes = the sum of ``numel * element_size`` over every tensor in ``optimizer.state`` after
one step (step counters included), for the whole model (hidden matrices through the low-rank
route, embeddings, head, norms and biases through AdamW) and for the hidden matrices alone.
Then the same for AdamW and FRUGAL's default on the speed benchmark's 24 matrices (6 layers of
``LAYER_SHAPES``), over one cycle of FRUGAL's periods (``update_every=1``: each step moves the
state-full set), whose state-full matrices differ in size from period to period.

Usage: python benchmarks/lowrank_state_bytes.py OUT.json [--dim 64] [--vocab 256]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

import orthoptim
from orthoptim.bench.models import TinyGPT
from orthoptim.bench.speed.benchmark import LAYER_SHAPES

CONFIGS: list[tuple[str, dict[str, object]]] = [
    ("adamw", {}),
    ("frugal", {}),
    ("frugal", {"projection": "svd"}),
    ("frugal", {"projection": "dct"}),
    ("lowrank_adamw", {}),
    ("lowrank_adamw", {"projection": "svd"}),
]


def state_bytes(opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> int:
    return sum(t.numel() * t.element_size() for p in params for t in opt.state[p].values())


def measure(name: str, options: dict[str, object], dim: int, vocab: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = TinyGPT(vocab=vocab, dim=dim, depth=2, heads=4, context=64)
    opt = orthoptim.build(name, model, **options)
    idx = torch.randint(0, vocab, (4, 65), generator=torch.Generator().manual_seed(0))
    loss = nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    opt.step()
    params = list(model.parameters())
    hidden = [p for n, p in model.named_parameters() if n.startswith("blocks") and p.ndim == 2]
    total, hidden_bytes = state_bytes(opt, params), state_bytes(opt, hidden)
    n_params, n_hidden = sum(p.numel() for p in params), sum(p.numel() for p in hidden)
    return {
        "name": name,
        "options": options,
        "params": n_params,
        "hidden_params": n_hidden,
        "state_bytes": total,
        "hidden_state_bytes": hidden_bytes,
        "bytes_per_param": total / n_params,
        "hidden_bytes_per_param": hidden_bytes / n_hidden,
    }


def speed_matrices(name: str, steps: int) -> list[float]:
    """State bytes per parameter of ``name`` on the speed benchmark's 24 matrices after each of
    ``steps`` steps (FRUGAL with ``update_every=1``: a new period every step)."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.zeros(shape)) for _ in range(6) for shape in LAYER_SHAPES]
    opt = orthoptim.build(name, params, **({"update_every": 1} if name == "frugal" else {}))
    count = sum(p.numel() for p in params)
    out = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        out.append(state_bytes(opt, params) / count)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the JSON results")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=256)
    args = parser.parse_args()
    rows = [measure(name, options, args.dim, args.vocab) for name, options in CONFIGS]
    adamw = rows[0]
    print(
        f"TinyGPT depth 2, dim {args.dim}, vocab {args.vocab}: {adamw['params']} params "
        f"({adamw['hidden_params']} in hidden matrices); torch {torch.__version__}"
    )
    print(
        f"{'optimizer':34s} {'state bytes':>11s} {'B/param':>8s} {'vs adamw':>8s} "
        f"{'hidden bytes':>12s} {'hidden B/param':>14s}"
    )
    for row in rows:
        label = row["name"] + "".join(f" {k}={v}" for k, v in row["options"].items())
        print(
            f"{label:34s} {row['state_bytes']:11d} {row['bytes_per_param']:8.3f} "
            f"{row['state_bytes'] / adamw['state_bytes']:8.3f} {row['hidden_state_bytes']:12d} "
            f"{row['hidden_bytes_per_param']:14.3f}"
        )
    cycle = {name: speed_matrices(name, 4) for name in ("adamw", "frugal")}
    print(f"speed benchmark's 24 matrices ({', '.join(f'{r}x{c}' for r, c in LAYER_SHAPES)} x 6):")
    for name, per_step in cycle.items():
        steps = " ".join(f"{b:.3f}" for b in per_step)
        print(f"  {name:8s} B/param after steps 1-4: {steps} (max {max(per_step):.3f})")
    payload = {"model": {"class": "TinyGPT", "depth": 2, "dim": args.dim, "vocab": args.vocab}}
    payload |= {"torch": torch.__version__, "rows": rows, "speed_matrices": cycle}
    args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
