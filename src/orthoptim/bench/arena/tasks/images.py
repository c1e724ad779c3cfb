"""``digits``: a small CNN on real handwritten digits that ship inside scikit-learn.

Data: ``sklearn.datasets.load_digits`` (1,797 real 8x8 grey-level digits from the UCI
"Optical Recognition of Handwritten Digits" set, bundled in the scikit-learn wheel as
``sklearn/datasets/data/digits.csv.gz``; no download; verified with scikit-learn 1.9.1, and the
installed version is recorded in ``task_config.source``). Held out: 20% of each class, chosen by
a fixed permutation independent of the run's seed. A user image folder (``--data DIR`` with one
sub-folder per class) is read with matplotlib, converted to grey levels and resized to 8x8,
SmallCNN's input.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from orthoptim.bench.arena.tasks.base import Target, shuffled_batches
from orthoptim.bench.models import SmallCNN
from orthoptim.bench.shared.optional import require, version_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True, slots=True)
class Images:
    """Standardised single-channel 8x8 images split into training and held-out parts."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    classes: tuple[str, ...]
    source: str
    sha256: str


def _split(x: Tensor, y: Tensor, val_fraction: float) -> tuple[Tensor, Tensor]:
    """Boolean masks (train, val): ``val_fraction`` of each class, by a fixed permutation."""
    g = torch.Generator().manual_seed(0)
    val = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique().tolist():
        members = (y == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        val[members[: max(1, round(val_fraction * len(members)))]] = True
    return ~val, val


def _finish(x: Tensor, y: Tensor, classes: tuple[str, ...], source: str, vf: float) -> Images:
    train, val = _split(x, y, vf)
    mean, std = x[train].mean(), x[train].std()
    x = ((x - mean) / std).unsqueeze(1).float()
    digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
    return Images(x[train], y[train], x[val], y[val], classes, source, digest)


def _sklearn_digits(val_fraction: float) -> Images:
    datasets = require("sklearn.datasets", "the digits task")
    bunch = datasets.load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    source = (
        f"scikit-learn {version_of('scikit-learn')} sklearn.datasets.load_digits "
        f"({len(y)} real 8x8 digits, UCI optdigits; 20% of each class held out)"
    )
    return _finish(x, y, tuple(str(c) for c in range(10)), source, val_fraction)


def _image_folder(root: Path, val_fraction: float) -> Images:
    image = require("matplotlib.image", "reading an image folder")
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if len(classes) < 2:
        raise ValueError(f"digits --data {root}: need one sub-folder per class (found {classes})")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            a = torch.as_tensor(image.imread(path), dtype=torch.float32)
            if a.ndim == 3:
                a = a[..., :3].mean(-1)
            a = a / a.max().clamp_min(1e-12)
            xs.append(nn.functional.adaptive_avg_pool2d(a[None, None], 8)[0, 0])
            ys.append(label)
    if not xs:
        raise ValueError(f"digits --data {root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    source = f"user image folder {root} ({len(xs)} images, {len(classes)} classes, resized to 8x8)"
    return _finish(torch.stack(xs), torch.tensor(ys), classes, source, val_fraction)


@functools.lru_cache(maxsize=4)
def images(data: str | None = None, val_fraction: float = 0.2) -> Images:
    """scikit-learn's digits, or the user's image folder ``data``."""
    if data is None:
        return _sklearn_digits(val_fraction)
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"digits --data must be a folder of class sub-folders, got {data!r}")
    return _image_folder(root, val_fraction)


@dataclass(frozen=True, slots=True, kw_only=True)
class Digits:
    """``SmallCNN`` (two convs, BatchNorm, linear classifier) classifying real 8x8 digits.

    Metrics: held-out cross-entropy (``val_loss``, used to pick the lr) and accuracy
    (``val_acc``); the target is a stated accuracy. Data: scikit-learn's bundled ``load_digits``
    (module docstring; the scikit-learn version is in ``task_config.source``).
    """

    name: str = "digits"
    steps: int = 150
    batch_size: int = 32
    width: int = 16
    eval_every: int = 5
    target: Target = field(default_factory=lambda: Target("val_acc", 0.98, "max"))
    select_metric: str = "val_loss"
    data: str | None = None
    val_fraction: float = 0.2

    def _images(self) -> Images:
        return images(self.data, self.val_fraction)

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return SmallCNN(classes=len(self._images().classes), width=self.width)

    def batches(self, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        d = self._images()
        for idx in shuffled_batches(len(d.y_train), self.batch_size, seed):
            yield d.x_train[idx], d.y_train[idx]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        d = self._images()
        was_training = model.training
        model.eval()
        logits = model(d.x_val)
        model.train(was_training)
        return {
            "val_loss": nn.functional.cross_entropy(logits, d.y_val).item(),
            "val_acc": (logits.argmax(1) == d.y_val).float().mean().item(),
        }

    def describe(self) -> dict[str, Any]:
        d = self._images()
        return {
            **asdict(self),
            "target": self.target.as_dict(),
            "source": d.source,
            "data_sha256": d.sha256,
            "train_examples": len(d.y_train),
            "val_examples": len(d.y_val),
            "model": f"SmallCNN(classes={len(d.classes)}, width={self.width})",
        }
