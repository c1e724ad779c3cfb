"""What the runner needs from a task, and the target that defines "time to target"."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

Mode = Literal["min", "max"]


@dataclass(frozen=True, slots=True)
class Target:
    """A pass/fail threshold on one validation metric (heavyball's diagnostic benchmark style).

    Args:
        metric: key of ``Task.evaluate``'s result.
        value: the threshold.
        mode: ``"min"``: reached when ``metric <= value``; ``"max"``: when ``metric >= value``.
    """

    metric: str
    value: float
    mode: Mode

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"target mode must be 'min' or 'max', got {self.mode!r}")

    def reached(self, metrics: Mapping[str, float | None]) -> bool:
        """Whether ``metrics`` meets the threshold (a missing or non-finite value never does)."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        return value <= self.value if self.mode == "min" else value >= self.value

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "mode": self.mode}


@runtime_checkable
class Task(Protocol):
    """A race task: a frozen dataclass whose fields are its whole configuration.

    ``model(seed)`` and ``batches(seed)`` depend on the run's seed; the data split and any problem
    instance do not, so every optimizer and seed sees the same problem. ``evaluate`` returns
    validation metrics, including ``select_metric`` (lower is better; the lr sweep picks by it)
    and ``target.metric``.
    """

    # Read-only: the tasks are frozen dataclasses.
    @property
    def name(self) -> str: ...

    @property
    def steps(self) -> int: ...

    @property
    def eval_every(self) -> int: ...

    @property
    def target(self) -> Target: ...

    @property
    def select_metric(self) -> str: ...

    def model(self, seed: int) -> nn.Module: ...

    def batches(self, seed: int) -> Iterator[Any]: ...

    def loss(self, model: nn.Module, batch: Any) -> Tensor: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def describe(self) -> dict[str, Any]: ...


def shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Index batches over ``range(n)``: a fresh permutation each epoch, last partial batch dropped,
    so every step sees ``batch_size`` examples and the order depends only on ``seed``."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (parameters are drawn from it, not the global RNG)."""
    return torch.Generator().manual_seed(seed)
