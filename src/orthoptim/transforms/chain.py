"""``Chain``: transforms applied in order, itself a transform; its flat, namespaced state and its
matrix core (the part that sees each weight in ``(out, in)`` order)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from orthoptim._types import State
from orthoptim.functional.layout import DEFAULT_LAYOUT, is_stacked, matrices, matrix_shape
from orthoptim.transforms.base import Ctx, Transform, TransformBase


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


class _Slice(MutableMapping[str, Tensor]):
    """Matrix ``index`` of a stacked parameter's state: each buffer's slice along dimension 0
    (a view, so in-place updates land in the stack; an assigned buffer is copied into it, and
    an assigned empty one, a transform releasing a buffer that stands for zeros
    (``TransformBase.held``), zeroes the slice: the stack stays allocated for the others)."""

    __slots__ = ("_index", "_state")

    def __init__(self, state: State, index: int) -> None:
        self._state = state
        self._index = index

    def __getitem__(self, name: str) -> Tensor:
        return self._state[name][self._index]

    def __setitem__(self, name: str, value: Tensor) -> None:
        view = self._state[name][self._index]
        if value.numel() == 0 and view.numel():
            view.zero_()
        else:
            view.copy_(value)

    def __delitem__(self, name: str) -> None:
        raise TypeError("a stacked parameter's buffers are deleted for every matrix at once")

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def _oriented_ctx(
    c: Ctx,
    param: Tensor,
    grad: Tensor,
    previous: Tensor | None,
    hvp: tuple[Tensor, Tensor] | None,
    index: int,
) -> Ctx:
    return dataclasses.replace(
        c,
        param=param,
        grad=grad,
        grad_at_previous=previous,
        hvp=hvp,
        layout=DEFAULT_LAYOUT,
        stored=c.parameter,
        position=c.position + index,  # a stack's matrices hold consecutive positions
    )


@dataclass(frozen=True, slots=True)
class Chain(TransformBase):
    """Transforms applied in order; itself a transform. Nested chains are flattened.

    State keys are flat and namespaced, ``"<key>.<buffer>"`` (``"momentum.m"``); a key that occurs
    twice gets a suffix, ``"momentum#2.m"``.
    """

    key: ClassVar[str] = "chain"
    transforms: tuple[Transform, ...]
    prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    core: tuple[int, int] = field(init=False, repr=False, compare=False)
    """``(lo, hi)``: transforms ``[0, lo)`` and ``[hi, n)`` are element-wise (they run on any
    shard, in any layout), ``[lo, hi)`` is the matrix core (it reads the whole matrix, in
    ``(out, in)`` order). ``lo == hi == n`` for a chain that is element-wise throughout. Set at
    construction: every step of every parameter reads it."""
    fold_from: int = field(init=False, repr=False, compare=False)
    """Transforms ``[fold_from, n)`` each scale the update by a number and/or add a multiple of
    the parameter (``TransformBase.affine``: ``ScaleByShape``, ``AddWeightDecay``): the eager
    step folds them into its final update (``folded``) instead of a pass each."""

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
        flags = [t.elementwise for t in flat]
        n = len(flags)
        core = (n, n) if all(flags) else (flags.index(False), n - flags[::-1].index(False))
        object.__setattr__(self, "core", core)
        fold_from = n
        while fold_from > 0 and flat[fold_from - 1].foldable:
            fold_from -= 1
        object.__setattr__(self, "fold_from", fold_from)
        readers = [key for key, t in zip(prefixes, flat, strict=True) if t.needs_hvp]
        if len(readers) > 1:
            raise ValueError(
                f"at most one transform of a chain may read Hessian-vector products (one probe "
                f"per parameter and step), got {readers}"
            )

    @property
    def formula(self) -> str:  # type: ignore[override]
        return r"\;\to\;".join(t.formula for t in self.transforms)

    def init(self, p: Tensor, layout: str = DEFAULT_LAYOUT) -> dict[str, Tensor]:
        return self.init_range(0, len(self.transforms), p, layout)

    def held(self, p: Tensor, layout: str = DEFAULT_LAYOUT) -> dict[str, Tensor]:
        """``init``'s buffers at their in-use size (``TransformBase.held``)."""
        return self.init_range(0, len(self.transforms), p, layout, held=True)

    def init_range(
        self, lo: int, hi: int, p: Tensor, layout: str = DEFAULT_LAYOUT, held: bool = False
    ) -> dict[str, Tensor]:
        """The buffers of transforms ``[lo, hi)`` for ``p``: the matrix core's in ``(out, in)``
        order (stacked along dimension 0 for a stacked layout), the others shaped like ``p``.
        ``held``: at their in-use size (``TransformBase.held``), as a stacked layout's always
        are: each matrix sees a slice of them, which cannot be released on its own."""
        core_lo, core_hi = self.core
        views: list[Tensor] | None = None
        state: dict[str, Tensor] = {}
        for index in range(lo, hi):
            prefix, t = self.prefixes[index], self.transforms[index]
            if layout == DEFAULT_LAYOUT or not core_lo <= index < core_hi:
                buffers = t.held(p) if held else t.init(p)
            else:
                if views is None:
                    views = [m.contiguous() for m in matrices(p, layout)]
                stacked = is_stacked(layout)
                per_matrix = [t.held(m) if held or stacked else t.init(m) for m in views]
                buffers = (
                    {k: torch.stack([b[k] for b in per_matrix]) for k in per_matrix[0]}
                    if is_stacked(layout)
                    else per_matrix[0]
                )
            for name, buffer in buffers.items():
                state[f"{prefix}.{name}"] = buffer
        return state

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self.apply_many([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        return self.apply_range(0, len(self.transforms), us, ss, cs)

    def apply_range(
        self, lo: int, hi: int, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        """Transforms ``[lo, hi)`` over the updates, transform-major; the matrix core's see each
        update, parameter and gradient in ``(out, in)`` order (``Ctx.layout``)."""
        core_lo, core_hi = self.core
        a, b = max(lo, core_lo), min(hi, core_hi)
        if a >= b or all(c.layout == DEFAULT_LAYOUT for c in cs):
            return self._run(lo, hi, us, ss, cs)
        us = self._run(lo, a, us, ss, cs)
        us = self._run_in_matrix_order(a, b, us, ss, cs)
        return self._run(b, hi, us, ss, cs)

    def apply_narrow_range(
        self, lo: int, hi: int, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        """``apply_range`` for updates that go straight into the final ``theta - lr u``: the
        last transform may return a narrower dtype that the update promotes exactly
        (``TransformBase.apply_narrow``, Orthogonalize's bfloat16 factor), in the stored
        layout only (elsewhere the result is written back into ``u`` anyway), and where the
        step runs multi-tensor (``Ctx.multi_tensor``, a GPU's default): there it saves the
        copy back's kernel, while on the one-at-a-time path a CPU's ``theta.add_`` of a
        bfloat16 update allocates a float32 copy of it (4.6 MB for a 2048 x 512 matrix,
        measured) where the copy back into the shared working buffer allocates nothing."""
        last = self.transforms[hi - 1] if hi > lo else None
        multi_tensor = any(c.multi_tensor for c in cs)
        if (
            last is None
            or not multi_tensor
            or last.groupwise
            or last.batches
            or any(c.layout != DEFAULT_LAYOUT for c in cs)
        ):
            return self.apply_range(lo, hi, us, ss, cs)
        us = self.apply_range(lo, hi - 1, us, ss, cs)
        prefix = self.prefixes[hi - 1]
        return [
            last.apply_narrow(u, _Namespaced(s, prefix), c)
            for u, s, c in zip(us, ss, cs, strict=True)
        ]

    def apply_foreach_range(
        self, lo: int, hi: int, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        """Transforms ``[lo, hi)``, outside the matrix core, over a group's updates with their
        multi-tensor ops (``TransformBase.apply_foreach``)."""
        core_lo, core_hi = self.core
        if lo < hi and lo < core_hi and hi > core_lo:
            raise ValueError(f"transforms [{lo}, {hi}) overlap the matrix core {self.core}")
        for prefix, t in zip(self.prefixes[lo:hi], self.transforms[lo:hi], strict=True):
            us = t.apply_foreach(us, [_Namespaced(s, prefix) for s in ss], cs)
        return us

    def multi_tensor_span(self) -> tuple[int, int]:
        """``(head, tail)``: transforms ``[0, head)`` and ``[tail, fold_from)`` are outside the
        matrix core and have multi-tensor ops (``TransformBase.multi_tensor``); what lies
        between runs one parameter at a time. ``head == tail == fold_from`` when all do."""
        core_lo, core_hi = self.core
        outside = [
            t.multi_tensor and not core_lo <= i < core_hi
            for i, t in enumerate(self.transforms[: self.fold_from])
        ]
        head = outside.index(False) if False in outside else len(outside)
        tail = len(outside)
        while tail > head and outside[tail - 1]:
            tail -= 1
        return head, tail

    def folded(self, c: Ctx, start: int | None = None) -> tuple[float, float]:
        """``(a, b)``: transforms ``[start, n)`` (``start >= fold_from``, by default
        ``fold_from``) turn ``u`` into ``a u + b theta`` for the parameter of ``c`` (in its
        stored layout)."""
        a, b = 1.0, 0.0
        for t in self.transforms[self.fold_from if start is None else start :]:
            x, y = t.affine(c)  # type: ignore[misc]  # from fold_from on, every one is foldable
            a, b = a * x, b * x + y
        return a, b

    def _run(
        self, lo: int, hi: int, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        for prefix, t in zip(self.prefixes[lo:hi], self.transforms[lo:hi], strict=True):
            us = t.apply_many(us, [_Namespaced(s, prefix) for s in ss], cs)
        return us

    def _run_in_matrix_order(
        self, lo: int, hi: int, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        """``_run`` on each parameter's ``(out, in)`` matrices; results written back in its
        layout."""
        owners: list[tuple[int, Tensor | None]] = []
        flat_us: list[Tensor] = []
        flat_ss: list[State] = []
        flat_cs: list[Ctx] = []
        for i, (u, s, c) in enumerate(zip(us, ss, cs, strict=True)):
            if c.layout == DEFAULT_LAYOUT:
                owners.append((i, None))
                flat_us.append(u)
                flat_ss.append(s)
                flat_cs.append(c)
                continue
            updates = matrices(u, c.layout)
            previous = (
                [None] * len(updates)
                if c.grad_at_previous is None
                else matrices(c.grad_at_previous, c.layout)
            )
            hvps: list[tuple[Tensor, Tensor] | None] = (
                [None] * len(updates)
                if c.hvp is None
                else list(zip(*(matrices(x, c.layout) for x in c.hvp), strict=True))
            )
            views = zip(
                updates,
                matrices(c.param, c.layout),
                matrices(c.grad, c.layout),
                previous,
                hvps,
                strict=True,
            )
            for index, (view, param, grad, prev, hvp) in enumerate(views):
                owners.append((i, view))
                flat_us.append(view.contiguous())
                flat_ss.append(_Slice(s, index) if is_stacked(c.layout) else s)
                flat_cs.append(_oriented_ctx(c, param, grad, prev, hvp, index))
        results = self._run(lo, hi, flat_us, flat_ss, flat_cs)
        out = list(us)
        for (i, target), result in zip(owners, results, strict=True):
            if target is None:
                out[i] = result
            else:
                target.copy_(result)
        return out

    def validate(self, p: Tensor, name: str) -> None:
        for t in self.transforms:
            t.validate(p, name)

    def cost(self, shape: tuple[int, ...], layout: str = DEFAULT_LAYOUT) -> float:
        """FLOPs of one step on a parameter of ``shape``: the matrix core's on each of its
        ``(out, in)`` matrices."""
        lo, hi = self.core
        matrix, count = matrix_shape(shape, layout)
        return sum(
            count * t.cost(matrix) if lo <= i < hi else t.cost(shape)
            for i, t in enumerate(self.transforms)
        )

    @property
    def moments(self) -> tuple[float, ...]:
        """The first transform's moment coefficients that has any (``TransformBase.moments``)."""
        return next((t.moments for t in self.transforms if t.moments), ())

    def with_moments(self, moments: tuple[float, ...]) -> Chain:
        """This chain with ``moments`` in its first transform that has moment coefficients."""
        index = next(i for i, t in enumerate(self.transforms) if t.moments)
        replaced = self.transforms[index].with_moments(moments)
        return Chain((*self.transforms[:index], replaced, *self.transforms[index + 1 :]))

    def with_cluster(self, cluster: int) -> Chain:
        """This chain for a step whose batch came from data cluster ``cluster``: every transform
        that keeps one state per cluster (``with_cluster``: ``MultiMomentum``) told so.
        ``ValueError`` if none does (a param group's ``"cluster"`` entry would be ignored)."""
        if not any(hasattr(t, "with_cluster") for t in self.transforms):
            raise ValueError(
                f"the param group sets 'cluster' = {cluster!r}, but no transform of its chain "
                f"{list(self.prefixes)} reads a cluster (more_momentum's multi_momentum does)"
            )
        return Chain(
            tuple(
                t.with_cluster(cluster) if hasattr(t, "with_cluster") else t
                for t in self.transforms
            )
        )

    def insert(self, transform: Transform, *, after: str) -> Chain:
        """This chain with ``transform`` right after the transform named ``after``.

        ``after`` is a state key (``"momentum"``; ``"momentum#2"`` for the second transform with
        that key, ``"momentum#1"`` also names the first). A key that several transforms share is
        ambiguous alone; ``ValueError`` naming the chain's keys if ``after`` is ambiguous or
        absent.
        """
        at = self._position(after, "after") + 1
        return Chain((*self.transforms[:at], transform, *self.transforms[at:]))

    def replace(self, key: str, transform: Transform) -> Chain:
        """This chain with ``transform`` in place of the transform named ``key`` (a state key, as
        ``insert``'s ``after``); ``ValueError`` naming the chain's keys if absent or ambiguous."""
        at = self._position(key, "key")
        return Chain((*self.transforms[:at], transform, *self.transforms[at + 1 :]))

    def _position(self, name: str, argument: str) -> int:
        """The index of the transform whose state key is ``name`` (see ``insert``)."""
        keys = [t.key for t in self.transforms]
        if keys.count(name) > 1:
            raise ValueError(
                f"{argument}={name!r} is ambiguous: {keys.count(name)} transforms of the chain "
                f"{list(self.prefixes)} have that key; name one by its state key "
                f"({name + '#1'!r}, {name + '#2'!r}, ...)"
            )
        for index, (prefix, key) in enumerate(zip(self.prefixes, keys, strict=True)):
            if name in (prefix, f"{key}#1"):
                return index
        raise ValueError(
            f"{argument} must be the key of a transform in the chain {list(self.prefixes)}, "
            f"got {name!r}"
        )

    @property
    def previous_point(self) -> str | None:
        """The namespaced state key of the first transform's ``previous_point``."""
        return next(
            (
                f"{prefix}.{t.previous_point}"
                for prefix, t in zip(self.prefixes, self.transforms, strict=True)
                if t.previous_point is not None
            ),
            None,
        )

    @property
    def needs_hvp(self) -> bool:
        return any(t.needs_hvp for t in self.transforms)

    def hvp_probe(self, p: Tensor, step: int, index: int = 0) -> Tensor | None:
        """The probe of the transform that ``needs_hvp`` (one per chain: two would need two
        probes of one parameter, ``ValueError`` at construction)."""
        return next((t.hvp_probe(p, step, index) for t in self.transforms if t.needs_hvp), None)

    @property
    def needs_module(self) -> bool:
        return any(t.needs_module for t in self.transforms)

    @property
    def capturable(self) -> bool:  # type: ignore[override]
        """Whether every transform is (``TransformBase.capturable``)."""
        return all(t.capturable for t in self.transforms)

    @property
    def groupwise(self) -> bool:
        """Whether a transform of the chain works on the group's parameters together
        (``TransformBase.groupwise``), so the chain must run transform-major."""
        return any(t.groupwise for t in self.transforms)

    @property
    def route_wide(self) -> bool:
        """Whether a transform of the chain needs its route's parameters together
        (``TransformBase.route_wide``)."""
        return any(t.route_wide for t in self.transforms)

    @property
    def batches(self) -> bool:
        """Whether a transform of the chain batches the group on the multi-tensor path
        (``TransformBase.batches``)."""
        return any(t.batches for t in self.transforms)

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
