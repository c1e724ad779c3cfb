"""``lm``: a small GPT on real English text that ships with every CPython.

Data: ``pydoc_data/topics.py`` of the running CPython, part of every CPython install (verified
with CPython 3.11.7: a 757 KB file holding 465 K characters of the Python language reference in
79 topics; other versions hold other text, so ``task_config.source`` names the version and
``data_sha256`` fingerprints the bytes). Byte-level (vocabulary 256, UTF-8). Held out by topic:
topics taken in CRC-32 order of their names until 10% of the characters, so the split is the
same on every machine with the same Python. A user text file (``--data PATH``) is split by
position instead: its last 10% is held out.
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from orthoptim.bench.models import TinyGPT
from orthoptim.bench.tasks.base import Target, seeded


@dataclass(frozen=True, slots=True)
class Corpus:
    """A byte corpus split into training and held-out parts, with where it came from."""

    train: Tensor
    val: Tensor
    source: str
    sha256: str


def _pydoc_topics(val_fraction: float) -> Corpus:
    from pydoc_data import topics as module

    topics: dict[str, str] = module.topics
    total = sum(len(text) for text in topics.values())
    held: list[str] = []
    size = 0
    for name in sorted(topics, key=lambda k: (zlib.crc32(k.encode()), k)):
        if size >= val_fraction * total:
            break
        held.append(name)
        size += len(topics[name])
    train = "\n\n".join(topics[k] for k in sorted(topics) if k not in held)
    val = "\n\n".join(topics[k] for k in sorted(held))
    data = (train + "\x00" + val).encode()
    source = (
        f"CPython {platform.python_version()} pydoc_data/topics.py: {len(topics)} topics, "
        f"{len(held)} held out by topic ({', '.join(sorted(held)[:4])}, ...)"
    )
    return Corpus(
        train=torch.frombuffer(bytearray(train.encode()), dtype=torch.uint8),
        val=torch.frombuffer(bytearray(val.encode()), dtype=torch.uint8),
        source=source,
        sha256=hashlib.sha256(data).hexdigest()[:16],
    )


def _text_file(path: Path, val_fraction: float) -> Corpus:
    data = path.read_bytes()
    cut = int(len(data) * (1 - val_fraction))
    return Corpus(
        train=torch.frombuffer(bytearray(data[:cut]), dtype=torch.uint8),
        val=torch.frombuffer(bytearray(data[cut:]), dtype=torch.uint8),
        source=f"user text file {path} ({len(data):,} bytes; last {val_fraction:.0%} held out)",
        sha256=hashlib.sha256(data).hexdigest()[:16],
    )


@functools.lru_cache(maxsize=4)
def corpus(data: str | None = None, val_fraction: float = 0.1) -> Corpus:
    """The corpus: CPython's pydoc topics, or the user's text file ``data``."""
    if data is None:
        return _pydoc_topics(val_fraction)
    path = Path(data)
    if not path.is_file():
        raise ValueError(f"lm --data must be a text file, got {data!r}")
    return _text_file(path, val_fraction)


@dataclass(frozen=True, slots=True, kw_only=True)
class LanguageModel:
    """Next-byte prediction with ``TinyGPT`` (embeddings, 2 pre-norm blocks, untied head).

    Metric: held-out cross-entropy in nats per byte (``val_loss``; ``val_bpb`` in bits). The
    target is a stated validation loss. Data: see the module docstring (CPython's
    ``pydoc_data/topics.py``; the version is the Python running the race, recorded in each
    record's ``env.python`` and ``task_config.source``).
    """

    name: str = "lm"
    steps: int = 200
    batch_size: int = 16
    context: int = 64
    dim: int = 64
    depth: int = 2
    heads: int = 4
    eval_every: int = 10
    eval_windows: int = 64
    target: Target = field(default_factory=lambda: Target("val_loss", 2.5, "min"))
    select_metric: str = "val_loss"
    data: str | None = None
    val_fraction: float = 0.1

    def _corpus(self) -> Corpus:
        c = corpus(self.data, self.val_fraction)
        need = self.context + 2
        if len(c.train) < need or len(c.val) < need:
            raise ValueError(f"lm: each split needs at least {need} bytes ({c.source})")
        return c

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return TinyGPT(
            vocab=256, dim=self.dim, depth=self.depth, heads=self.heads, context=self.context
        )

    def batches(self, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        windows = self._corpus().train.unfold(0, self.context + 1, 1)
        g = seeded(seed)
        while True:
            rows = windows[torch.randint(len(windows), (self.batch_size,), generator=g)].long()
            yield rows[:, :-1], rows[:, 1:]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        val = self._corpus().val
        starts = torch.linspace(0, len(val) - self.context - 1, self.eval_windows).long()
        rows = torch.stack([val[s : s + self.context + 1] for s in starts.tolist()]).long()
        was_training = model.training
        model.eval()
        total = 0.0
        for chunk in rows.split(32):
            total += self.loss(model, (chunk[:, :-1], chunk[:, 1:])).item() * len(chunk)
        model.train(was_training)
        loss = total / len(rows)
        return {"val_loss": loss, "val_bpb": loss / math.log(2)}

    def describe(self) -> dict[str, Any]:
        c = self._corpus()
        return {
            **asdict(self),
            "target": self.target.as_dict(),
            "source": c.source,
            "data_sha256": c.sha256,
            "train_bytes": len(c.train),
            "val_bytes": len(c.val),
            "model": f"TinyGPT(vocab=256, dim={self.dim}, depth={self.depth}, "
            f"heads={self.heads}, context={self.context})",
        }
