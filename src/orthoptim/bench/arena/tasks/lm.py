"""``lm`` and ``lm_medium``: byte-level GPTs on real English text that ships with every CPython.

Two built-in corpora (``LanguageModel.corpus``), both read from the running CPython, so nothing
is downloaded and nothing is bundled:

- ``"pydoc_topics"`` (task ``lm``): ``pydoc_data/topics.py``, part of every CPython install
  (verified with CPython 3.11.7: a 757 KB file holding 465 K characters of the Python language
  reference in 79 topics). Held out by topic.
- ``"stdlib"`` (task ``lm_medium``): the docstrings of the standard library's pure-Python
  modules plus the pydoc topics (CPython 3.11.7: 573 files with docstrings, 1.68 M characters,
  plus the 465 K characters of topics: 2.15 MB of UTF-8, built once and cached per
  process). Docstrings rather than the source itself because they are the stdlib's
  English prose, the same kind of text as the topics, so ``lm_medium`` is ``lm`` scaled up
  rather than a different problem; and 2 MB is enough that a run of ``lm_medium`` (0.5 M
  training bytes) sees most bytes at most once, so held-out loss measures optimization rather
  than memorization. The source (about 10 MB, mostly code) would be more text but a different
  task. Docstrings are read as Python defines them, without importing anything: ``ast.parse``
  of each ``.py`` file, then ``ast.get_docstring`` (cleaned like ``inspect.cleandoc``) of the
  module, every class and every function, in source order. Tests, IDLE, demos, bundled wheels
  and installed packages are skipped (``_SKIP_DIRS``), as are files that do not parse. Held out
  by document: each stdlib file is one document and each pydoc topic another (3.11.7: 81 of
  652 held out, 65 files and 16 topics, 246 KB or 11.5% of the bytes; the 10% is overshot by
  the last document taken).

Both are split the same way: documents taken in CRC-32 order of their names until 10% of the
characters are held out, so the split is the same on every machine with the same Python and no
held-out document contributes a byte to training. Other versions hold other text, so
``task_config.source`` names the version and the held-out documents, and ``data_sha256``
fingerprints the bytes. Byte-level (vocabulary 256, UTF-8). A user text file (``--data PATH``) is
split by position instead: its last 10% is held out.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
import os
import platform
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from orthoptim.bench.arena.tasks.base import Target, seeded
from orthoptim.bench.models import TinyGPT

CorpusName = Literal["pydoc_topics", "stdlib"]


@dataclass(frozen=True, slots=True)
class Corpus:
    """A byte corpus split into training and held-out parts, with where it came from.

    ``train_docs`` / ``val_docs`` name the documents (topics, stdlib files) in each part; both are
    empty for a user text file, which is split by position.
    """

    train: Tensor
    val: Tensor
    source: str
    sha256: str
    train_docs: tuple[str, ...] = ()
    val_docs: tuple[str, ...] = ()


def _split_by_document(docs: dict[str, str], val_fraction: float) -> Corpus:
    """Hold out whole documents, in CRC-32 order of their names, until ``val_fraction`` of the
    characters; ``source`` is left for the caller. A hash order rather than a sorted one so the
    held-out part is not one corner of the alphabet (one package, one letter of topics)."""
    total = sum(len(text) for text in docs.values())
    held: list[str] = []
    size = 0
    for name in sorted(docs, key=lambda k: (zlib.crc32(k.encode()), k)):
        if size >= val_fraction * total:
            break
        held.append(name)
        size += len(docs[name])
    kept = set(held)
    train_docs = tuple(k for k in sorted(docs) if k not in kept)
    val_docs = tuple(sorted(held))
    train = "\n\n".join(docs[k] for k in train_docs)
    val = "\n\n".join(docs[k] for k in val_docs)
    data = (train + "\x00" + val).encode()
    return Corpus(
        train=torch.frombuffer(bytearray(train.encode()), dtype=torch.uint8),
        val=torch.frombuffer(bytearray(val.encode()), dtype=torch.uint8),
        source="",
        sha256=hashlib.sha256(data).hexdigest()[:16],
        train_docs=train_docs,
        val_docs=val_docs,
    )


def _pydoc_topics(val_fraction: float) -> Corpus:
    from pydoc_data import topics as module

    topics: dict[str, str] = module.topics
    c = _split_by_document(topics, val_fraction)
    source = (
        f"CPython {platform.python_version()} pydoc_data/topics.py: {len(topics)} topics, "
        f"{len(c.val_docs)} held out by topic ({', '.join(c.val_docs[:4])}, ...)"
    )
    return replace(c, source=source)


# Directory names skipped anywhere under the stdlib: test suites (their docstrings describe
# tests, and lib2to3's test data holds deliberately broken files), IDLE and turtle demos
# (applications, not library text), bundled wheels, installed third-party packages (they differ
# per machine, which would break the same-split-everywhere promise), and pydoc_data (its topics
# are added as separate documents).
_SKIP_DIRS: frozenset[str] = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "turtledemo",
        "ensurepip",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "pydoc_data",
    }
)
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of ``node`` and of the classes and functions defined in it, in source order."""
    if isinstance(node, _DOCUMENTED):
        doc = ast.get_docstring(node)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        # Only statements can define classes or functions; skipping expressions halves the walk.
        if isinstance(child, ast.stmt):
            yield from _docstrings(child)


@functools.lru_cache(maxsize=1)
def stdlib_docstrings() -> dict[str, str]:
    """``{path relative to the stdlib (POSIX): its docstrings joined by blank lines}`` for every
    pure-Python standard-library module that parses and has a docstring (see ``_SKIP_DIRS``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        # Pruned in place so os.walk never descends into the (large) test suites; sorted so the
        # walk order, and with it nothing else, varies between file systems.
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = Path(folder, name)
            try:
                tree = ast.parse(path.read_bytes(), filename=str(path))
            except (SyntaxError, ValueError, RecursionError, OSError):
                continue  # a file the running Python cannot parse is not one it can document
            text = "\n\n".join(_docstrings(tree))
            if text:
                docs[path.relative_to(root).as_posix()] = text
    return docs


def _stdlib(val_fraction: float) -> Corpus:
    from pydoc_data import topics as module

    files = stdlib_docstrings()
    if not files:
        raise ValueError(f"lm: no docstrings found under {sysconfig.get_paths()['stdlib']}")
    topics: dict[str, str] = module.topics
    docs = {**files, **{f"pydoc_data/topics.py:{k}": v for k, v in topics.items()}}
    c = _split_by_document(docs, val_fraction)
    held_files = [k for k in c.val_docs if k in files]
    source = (
        f"CPython {platform.python_version()} standard library docstrings ({len(files)} files) "
        f"and pydoc_data/topics.py ({len(topics)} topics): {len(c.val_docs)} documents held out "
        f"by file ({len(held_files)} files: {', '.join(held_files[:4])}, ...; "
        f"{len(c.val_docs) - len(held_files)} topics)"
    )
    return replace(c, source=source)


_BUILTIN: dict[str, Callable[[float], Corpus]] = {"pydoc_topics": _pydoc_topics, "stdlib": _stdlib}


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
def corpus(
    data: str | None = None, val_fraction: float = 0.1, *, name: CorpusName = "pydoc_topics"
) -> Corpus:
    """The built-in corpus ``name`` of the running CPython, or the user's text file ``data``
    (which then replaces it). Cached: the stdlib corpus takes seconds to parse."""
    if data is None:
        if name not in _BUILTIN:
            raise ValueError(f"lm: unknown corpus {name!r} (known: {', '.join(_BUILTIN)})")
        return _BUILTIN[name](val_fraction)
    path = Path(data)
    if not path.is_file():
        raise ValueError(f"lm --data must be a text file, got {data!r}")
    return _text_file(path, val_fraction)


@dataclass(frozen=True, slots=True, kw_only=True)
class LanguageModel:
    """Next-byte prediction with ``TinyGPT`` (embeddings, pre-norm blocks, untied head).

    Metric: held-out cross-entropy in nats per byte (``val_loss``; ``val_bpb`` in bits), on
    ``eval_windows`` fixed windows spread evenly over the held-out bytes. The target is a stated
    validation loss. Data: ``corpus`` (see the module docstring; the version is the Python
    running the race, recorded in each record's ``env.python`` and ``task_config.source``).
    The defaults are task ``lm``; ``medium()`` configures ``lm_medium``.
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
    corpus: CorpusName = "pydoc_topics"
    data: str | None = None
    val_fraction: float = 0.1

    def _corpus(self) -> Corpus:
        c = corpus(self.data, self.val_fraction, name=self.corpus)
        need = self.context + 2
        if len(c.train) < need or len(c.val) < need:
            raise ValueError(f"{self.name}: each split needs at least {need} bytes ({c.source})")
        return c

    def _gpt(self) -> TinyGPT:
        return TinyGPT(
            vocab=256, dim=self.dim, depth=self.depth, heads=self.heads, context=self.context
        )

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return self._gpt()

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

    def parameter_counts(self) -> tuple[int, int]:
        """``(parameters, of which in hidden matrices)`` of the model, by ``routing.classify``
        (the share an orthogonalizing optimizer acts on). Built on the meta device: no memory,
        and the global RNG that ``model(seed)`` seeds is left alone."""
        from orthoptim.routing import classify

        with torch.device("meta"):
            gpt = self._gpt()
        roles = classify(gpt)
        sizes = dict(gpt.named_parameters())
        total = sum(p.numel() for p in sizes.values())
        hidden = sum(sizes[k].numel() for k, role in roles.items() if role == "hidden")
        return total, hidden

    def describe(self) -> dict[str, Any]:
        c = self._corpus()
        total, hidden = self.parameter_counts()
        return {
            **asdict(self),
            "target": self.target.as_dict(),
            "source": c.source,
            "data_sha256": c.sha256,
            "train_bytes": len(c.train),
            "val_bytes": len(c.val),
            "model": f"TinyGPT(vocab=256, dim={self.dim}, depth={self.depth}, "
            f"heads={self.heads}, context={self.context}): {total:,} parameters, "
            f"{hidden / total:.0%} in hidden matrices",
        }


def medium() -> LanguageModel:
    """``lm_medium``, the final of the race: ``TinyGPT`` with dim 256, depth 4, 4 heads, context
    128 (3,319,296 parameters, 95% in hidden matrices, so the race measures what a matrix-aware
    optimizer does to the matrices) on the ``"stdlib"`` corpus, batch 8, 500 steps.

    Sized on 2 CPU cores at 1 torch thread so that a run takes about two minutes and the model
    is far from converged at step 500. Batch 8 rather than 16 so that the same budget buys 500
    optimizer steps rather than 250: more steps for optimizers to differ in. The target is where
    AdamW, at its best lr, is about two thirds through the run, past the plateau (where a flat
    curve would let noise decide the crossing) and into the steep part, where a step saved is
    clearly resolved. The measurements behind these choices (step times, AdamW's curves per
    seed and per lr): ``benchmarks/records/2026-12-06_default-race-3/README.md``, "How
    ``lm_medium`` was sized".
    """
    return LanguageModel(
        name="lm_medium",
        corpus="stdlib",
        steps=500,
        batch_size=8,
        context=128,
        dim=256,
        depth=4,
        heads=4,
        eval_every=25,
        eval_windows=96,
        target=Target("val_loss", 2.55, "min"),
    )
