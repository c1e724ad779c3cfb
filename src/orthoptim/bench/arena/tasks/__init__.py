"""Race tasks: two real ones (``lm``, ``digits``), two quick diagnostics, and the final.

``make(name, quick=..., data=...)`` returns a configured frozen dataclass. The default
configurations size the default race (``TASKS``: 21 minutes on 2 CPU cores); ``quick=True``
shrinks each task so that ``orthoptim race --quick`` finishes in well under a minute. ``FINAL``
(``lm_medium``, a 3.3 M-parameter GPT on the standard library's docstrings, about 2 minutes a
run) is left out of ``TASKS`` so the default race stays short; it runs when named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from orthoptim.bench.arena.tasks.base import Target, Task
from orthoptim.bench.arena.tasks.images import Digits
from orthoptim.bench.arena.tasks.lm import CorpusName, LanguageModel, medium
from orthoptim.bench.arena.tasks.synthetic import MatrixSensing, Quadratic

REAL: tuple[str, ...] = ("lm", "digits", "lm_medium")
DIAGNOSTIC: tuple[str, ...] = ("quadratic", "matrix_sensing")
FINAL: tuple[str, ...] = ("lm_medium",)
TASKS: tuple[str, ...] = tuple(n for n in REAL if n not in FINAL) + DIAGNOSTIC
"""The default race: every task but the final."""

_DEFAULT: dict[str, Callable[[], Task]] = {
    "lm": LanguageModel,
    "digits": Digits,
    "quadratic": Quadratic,
    "matrix_sensing": MatrixSensing,
    "lm_medium": medium,
}


def _quick_lm(name: str = "lm", corpus: CorpusName = "pydoc_topics", loss: float = 3.3) -> Task:
    """lm's smoke-test size: 30 steps of a one-block GPT, target ``val_loss <= loss``."""
    return LanguageModel(
        name=name,
        corpus=corpus,
        steps=30,
        batch_size=8,
        dim=32,
        depth=1,
        context=32,
        eval_every=10,
        eval_windows=16,
        target=Target("val_loss", loss, "min"),
    )


_QUICK: dict[str, Callable[[], Task]] = {
    "lm": _quick_lm,
    "digits": lambda: Digits(
        steps=40, width=8, eval_every=10, target=Target("val_acc", 0.8, "max")
    ),
    "quadratic": lambda: Quadratic(
        dim=16, steps=40, eval_every=5, target=Target("rel_loss", 0.2, "min")
    ),
    "matrix_sensing": lambda: MatrixSensing(
        rows=16,
        cols=16,
        measurements=256,
        held_out=64,
        steps=60,
        eval_every=10,
        target=Target("rel_error", 0.6, "min"),
    ),
    # lm's smoke-test size on the stdlib corpus: what a quick run checks is the corpus and its
    # split, not the model size. Target: AdamW at lr 8e-3 (the quick grid's top) reaches 3.35
    # by step 30, lr 1e-3 only 4.63.
    "lm_medium": lambda: _quick_lm("lm_medium", "stdlib", 3.4),
}


def make(
    name: str, *, quick: bool = False, data: str | None = None, steps: int | None = None
) -> Task:
    """Task ``name`` in its default (or quick) configuration.

    Args:
        name: one of ``TASKS`` or ``FINAL``.
        quick: the small configuration of ``orthoptim race --quick``.
        data: a user text file (``lm``, ``lm_medium``) or image folder (``digits``) instead of
            the bundled data.
        steps: override the number of training steps (``eval_every`` is kept).
    """
    if name not in _DEFAULT:
        raise KeyError(f"unknown task {name!r} (known: {', '.join(TASKS + FINAL)})")
    task = (_QUICK if quick else _DEFAULT)[name]()
    changes: dict[str, object] = {}
    if data is not None:
        if name not in REAL:
            raise ValueError(f"--data applies to {' or '.join(REAL)}, not to {name!r}")
        changes["data"] = data
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        changes["steps"] = steps
    return dataclasses.replace(task, **changes) if changes else task  # type: ignore[type-var]


__all__ = [
    "DIAGNOSTIC",
    "FINAL",
    "REAL",
    "TASKS",
    "Digits",
    "LanguageModel",
    "MatrixSensing",
    "Quadratic",
    "Target",
    "Task",
    "make",
]
