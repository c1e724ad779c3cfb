"""Race optimizers on your own model and data with the arena's protocol.

    python examples/race_your_model.py [--out DIR] [--specs muon normuon shampoo] [--quick]

The model is a small MLP classifier defined below; the data are scikit-learn's bundled
"wine" measurements (178 samples, 13 features, 3 cultivars; they ship inside the wheel, no
download). ``orthoptim.bench.race`` gives every optimizer the same lr sweep (AdamW first; its
pick is the lr of every matrix optimizer's AdamW route), extends a sweep whose pick sits at an
edge, runs seeds at the picked lr, races the installed peers, and writes ``records.jsonl``,
``report.md`` and plots, as ``orthoptim race`` does for its built-in tasks.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch
from torch import nn

import orthoptim.bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output folder (default runs/<timestamp>)")
    parser.add_argument("--specs", nargs="+", default=["muon", "normuon", "shampoo", "soap"])
    parser.add_argument("--quick", action="store_true", help="3 lr points, 1 seed, no peers")
    args = parser.parse_args()

    from sklearn.datasets import load_wine  # the [bench] extra

    features, labels = load_wine(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(labels)
    held = torch.arange(len(y)) % 5 == 0  # every fifth sample held out, the same for all runs
    mean, std = x[~held].mean(0), x[~held].std(0)
    x = (x - mean) / std
    x_train, y_train, x_val, y_val = x[~held], y[~held], x[held], y[held]

    def model_fn() -> nn.Module:
        return nn.Sequential(
            nn.Linear(13, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 3)
        )

    def batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        while True:
            rows = torch.randint(0, len(y_train), (32,), generator=g)
            yield x_train[rows], y_train[rows]

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.cross_entropy(model(inputs), targets)

    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = model(x_val)
        return {
            "val_loss": nn.functional.cross_entropy(logits, y_val).item(),
            "val_acc": (logits.argmax(1) == y_val).float().mean().item(),
        }

    out = orthoptim.bench.race(
        model_fn,
        batches,
        evaluate,
        loss_fn=loss_fn,
        target=("val_loss", 0.1, "min"),
        steps=100,
        eval_every=5,
        specs=args.specs,
        name="wine_mlp",
        peers=not args.quick,
        lr_points=3 if args.quick else 5,
        seeds=1 if args.quick else 3,
        out=args.out,
    )
    print(f"records, report.md and plots in {out}")


if __name__ == "__main__":
    main()
