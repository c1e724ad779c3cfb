"""The transform protocol, the per-step context, and ``Chain``.

A transform is a frozen dataclass with ``init(p) -> State`` (its buffers for parameter ``p``) and
``apply(u, s, c) -> Tensor`` (the next update from the incoming update ``u``). ``u`` is a working
copy owned by the chain, so a transform may change it in place; it never writes ``c.grad`` or
``c.param`` and never returns one of its own state buffers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from torch import Tensor

from orthoptim._types import State


@dataclass(frozen=True, slots=True)
class Ctx:
    """Read-only facts about one parameter at one step, passed to every transform.

    Args:
        step: 1-based count of updates of this parameter.
        lr: the group's learning rate after any torch LR scheduler.
        weight_decay: the group's weight decay.
        param: the parameter (never written by transforms).
        grad: the raw gradient (never written by transforms).
        name: the parameter's name, "" when parameters were passed without names.
        grad_at_previous: the gradient at the parameter's previous value on the current batch,
            which ``ChainOptimizer.step(closure)`` evaluates for transforms that set
            ``needs_closure`` (exact MARS) from their second step on; ``None`` otherwise.
    """

    step: int
    lr: float
    weight_decay: float
    param: Tensor
    grad: Tensor
    name: str = ""
    grad_at_previous: Tensor | None = None


@runtime_checkable
class Transform(Protocol):
    """What the optimizer shell needs from a transform."""

    key: ClassVar[str]
    formula: ClassVar[str]

    def init(self, p: Tensor) -> dict[str, Tensor]: ...

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor: ...

    def apply_many(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]: ...

    def validate(self, p: Tensor, name: str) -> None: ...

    def cost(self, shape: tuple[int, ...]) -> float: ...


class TransformBase:
    """Defaults for the optional parts of ``Transform``; subclasses are frozen dataclasses.

    ``elementwise`` says whether each element of the output depends only on the same element of
    the input and of the state (momentum, Adam moments, weight decay): such a transform can run
    on any shard of a parameter. A transform that reads the whole matrix (orthogonalisation,
    Kronecker factors, row or layer statistics) leaves it ``False``, and a distributed step runs
    it on the full matrix on one owner rank.
    """

    __slots__ = ()
    key: ClassVar[str] = ""
    formula: ClassVar[str] = ""
    elementwise: ClassVar[bool] = False

    def init(self, p: Tensor) -> dict[str, Tensor]:
        return {}

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        """One update per parameter; a transform overrides it where batching pays."""
        apply = self.apply  # type: ignore[attr-defined]  # every concrete transform defines it
        return [apply(u, s, c) for u, s, c in zip(us, ss, cs, strict=True)]

    def validate(self, p: Tensor, name: str) -> None:
        """Raise ``ValueError`` if this transform cannot update ``p`` (checked at construction)."""

    def cost(self, shape: tuple[int, ...]) -> float:
        """Estimated FLOPs of one ``apply`` on a parameter of ``shape`` (periodic work such as a
        basis refresh amortised over its period): what load balancers and benchmarks weigh. The
        default, one FLOP per element, suits element-wise transforms."""
        return float(math.prod(shape))


class _Namespaced(MutableMapping[str, Tensor]):
    """The buffers of one transform inside a chain's flat state: ``"<prefix>.<name>"`` keys."""

    __slots__ = ("_prefix", "_state")

    def __init__(self, state: State, prefix: str) -> None:
        self._state = state
        self._prefix = prefix + "."

    def __getitem__(self, name: str) -> Tensor:
        return self._state[self._prefix + name]

    def __setitem__(self, name: str, value: Tensor) -> None:
        self._state[self._prefix + name] = value

    def __delitem__(self, name: str) -> None:
        del self._state[self._prefix + name]

    def __iter__(self) -> Iterator[str]:
        n = len(self._prefix)
        return (k[n:] for k in self._state if k.startswith(self._prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True, slots=True)
class Chain(TransformBase):
    """Transforms applied in order; itself a transform. Nested chains are flattened.

    State keys are flat and namespaced, ``"<key>.<buffer>"`` (``"momentum.m"``); a key that occurs
    twice gets a suffix, ``"momentum#2.m"``.
    """

    key: ClassVar[str] = "chain"
    transforms: tuple[Transform, ...]
    prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        flat: list[Transform] = []
        for t in self.transforms:
            if isinstance(t, Chain):
                flat.extend(t.transforms)
            elif isinstance(t, Transform):
                flat.append(t)
            else:
                raise TypeError(f"chain() takes transforms, got {type(t).__name__}: {t!r}")
        seen: dict[str, int] = {}
        prefixes = []
        for t in flat:
            seen[t.key] = seen.get(t.key, 0) + 1
            prefixes.append(t.key if seen[t.key] == 1 else f"{t.key}#{seen[t.key]}")
        object.__setattr__(self, "transforms", tuple(flat))
        object.__setattr__(self, "prefixes", tuple(prefixes))

    @property
    def formula(self) -> str:  # type: ignore[override]
        return r"\;\to\;".join(t.formula for t in self.transforms)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        for prefix, t in zip(self.prefixes, self.transforms, strict=True):
            for name, buffer in t.init(p).items():
                state[f"{prefix}.{name}"] = buffer
        return state

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self.apply_many([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        for prefix, t in zip(self.prefixes, self.transforms, strict=True):
            us = t.apply_many(us, [_Namespaced(s, prefix) for s in ss], cs)
        return us

    def validate(self, p: Tensor, name: str) -> None:
        for t in self.transforms:
            t.validate(p, name)

    def cost(self, shape: tuple[int, ...]) -> float:
        return sum(t.cost(shape) for t in self.transforms)

    @property
    def groupwise(self) -> bool:
        """Whether a transform of the chain works on the group's parameters together (overrides
        ``apply_many``: batched or group-relative), so the chain must run transform-major."""
        return any(type(t).apply_many is not TransformBase.apply_many for t in self.transforms)

    @property
    def is_elementwise(self) -> bool:
        """Whether every transform of the chain is element-wise (runs on shards as it is)."""
        return all(t.elementwise for t in self.transforms)


def chain(*transforms: Transform) -> Chain:
    """``Chain`` of the given transforms (``chain()`` is the identity)."""
    return Chain(tuple(transforms))


def explain(c: Chain) -> str:
    """The update rule of a chain, one numbered line per transform (LaTeX formulas)."""
    lines = [f"{i}. {type(t).__name__}: {t.formula}" for i, t in enumerate(c.transforms, 1)]
    lines.append(r"finally: \theta \leftarrow \theta - \eta\, u")
    return "\n".join(lines)
