"""The transform protocol, the per-step context and ``TransformBase`` (``Chain`` is in ``chain``).

A transform is a frozen dataclass with ``init(p) -> State`` (its buffers for parameter ``p``) and
``apply(u, s, c) -> Tensor`` (the next update from the incoming update ``u``). ``u`` is a working
copy owned by the chain, so a transform may change it in place; it never writes ``c.grad`` or
``c.param`` and never returns one of its own state buffers. These and the other conventions every
transform keeps (statistics dtype, ``(out, in)`` order, decay as a transform, named options,
provenance) are stated once in docs/architecture.md, "House conventions".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar, cast, runtime_checkable

from torch import Tensor

from orthoptim._types import State
from orthoptim.functional.layout import DEFAULT_LAYOUT

_T = TypeVar("_T")
_BetasT = TypeVar("_BetasT", bound="BetasMoments")
_MomentumT = TypeVar("_MomentumT", bound="MomentumMoments")


@dataclass(frozen=True, slots=True)
class Ctx:
    """Read-only facts about one parameter at one step, passed to every transform.

    Args:
        step: 1-based count of updates of this parameter: a Python int, or under
            ``ChainOptimizer(capturable=True)`` the counter itself, a 0-d float32 tensor on the
            parameter's device (only ``capturable`` transforms see it).
        lr: the group's learning rate after any torch LR scheduler.
        weight_decay: the group's weight decay.
        param: the parameter (never written by transforms).
        grad: the raw gradient (never written by transforms).
        name: the parameter's name, "" when parameters were passed without names.
        grad_at_previous: the gradient at the parameter's previous value on the current batch,
            which ``ChainOptimizer.step(closure)`` evaluates for transforms that set
            ``needs_closure`` (exact MARS) from their second step on; ``None`` otherwise.
        layout: how the parameter stores its matrix (``functional.layout``). The chain's matrix
            core (``Chain.core``) sees ``param``, ``grad`` and the update in ``(out, in)`` order
            whatever the layout, and a stacked parameter one matrix at a time.
        stored: the parameter as the module stores it, where ``param`` is a view of it in
            ``(out, in)`` order; ``None`` where ``param`` is the parameter itself.
        multi_tensor: the shell runs this step with multi-tensor ops over the group
            (``ChainOptimizer(foreach=True)``, a GPU's default): every working copy is alive at
            once, so a transform that ``batches`` may batch them.
        position: the matrix's index among its route's matrices, in the order of the
            optimizer's param groups (``groups.route_positions``; a stacked parameter's
            matrices take one each, and the matrix core sees each one's): the same on every
            rank and after a resume, so a schedule over the route's tensors (FRUGAL's
            state-full blocks) needs no state.
        route_size: how many matrices the route has (1 where a transform is run alone).
        hvp: ``(v, H v)``, a probe and the Hessian-vector product at it, in the parameter's
            layout (the matrix core sees them in ``(out, in)`` order), which
            ``ChainOptimizer.step(closure)`` evaluates (``orthoptim.hvp``) for a transform
            that ``needs_hvp`` at the steps its ``hvp_probe`` draws one; ``None`` otherwise.
        record: on a telemetry step (``ChainOptimizer(telemetry_every=N)``), where a transform
            reports a figure of this parameter's step as a device tensor, ``record(figure,
            value)`` (Orthogonalize: ``"polar_health"``); ``None`` on every other step, where a
            transform must do no extra work.
    """

    step: int | Tensor
    lr: float | Tensor
    weight_decay: float
    param: Tensor
    grad: Tensor
    name: str = ""
    grad_at_previous: Tensor | None = None
    layout: str = DEFAULT_LAYOUT
    stored: Tensor | None = None
    multi_tensor: bool = False
    position: int = 0
    route_size: int = 1
    hvp: tuple[Tensor, Tensor] | None = None
    record: Callable[[str, Tensor], None] | None = None

    @property
    def int_step(self) -> int:
        """``step`` as the Python int it is wherever the counter stays on the host: in every
        transform that is not ``capturable`` (``ChainOptimizer(capturable=True)`` refuses
        those) and on the multi-tensor path (``apply_foreach``), which ``capturable`` turns
        off."""
        return cast(int, self.step)

    @property
    def parameter(self) -> Tensor:
        """The parameter tensor itself (what per-parameter lookups, such as a layer capture's,
        are keyed by), also where ``param`` is a view of it in ``(out, in)`` order."""
        return self.param if self.stored is None else self.stored


@runtime_checkable
class Transform(Protocol):
    """What the optimizer shell needs from a transform."""

    key: ClassVar[str]

    # Read-only here: a transform declares them as class constants (``TransformBase``), a
    # composite one (``Chain``, ``FisherTrustRegion``) derives them from its parts.
    @property
    def formula(self) -> str: ...

    @property
    def capturable(self) -> bool: ...

    @property
    def elementwise(self) -> bool: ...

    def init(self, p: Tensor) -> dict[str, Tensor]: ...

    def held(self, p: Tensor) -> dict[str, Tensor]: ...

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor: ...

    def apply_many(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]: ...

    def apply_foreach(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]: ...

    def apply_narrow(self, u: Tensor, s: State, c: Ctx) -> Tensor: ...

    def affine(self, c: Ctx) -> tuple[float, float] | None: ...

    def validate(self, p: Tensor, name: str) -> None: ...

    def cost(self, shape: tuple[int, ...]) -> float: ...

    @property
    def moments(self) -> tuple[float, ...]: ...

    @property
    def previous_point(self) -> str | None: ...

    @property
    def needs_closure(self) -> bool: ...

    @property
    def needs_hvp(self) -> bool: ...

    def hvp_probe(self, p: Tensor, step: int, index: int = 0) -> Tensor | None: ...

    @property
    def needs_module(self) -> bool: ...

    @property
    def groupwise(self) -> bool: ...

    @property
    def route_wide(self) -> bool: ...

    @property
    def batches(self) -> bool: ...

    @property
    def multi_tensor(self) -> bool: ...

    @property
    def foldable(self) -> bool: ...

    def with_moments(self, moments: tuple[float, ...]) -> Transform: ...


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
    capturable: ClassVar[bool] = False
    """Whether ``apply`` takes ``Ctx.step`` as a device tensor and reads no tensor value on the
    host (no Python branch on data): what ``ChainOptimizer(capturable=True)`` needs, so that a
    captured or compiled step does not freeze the step count."""

    def init(self, p: Tensor) -> dict[str, Tensor]:
        return {}

    def held(self, p: Tensor) -> dict[str, Tensor]:
        """``init``'s buffers at the size they have while in use. A transform may keep a buffer
        released (an empty ``(0,)`` tensor of its dtype and device) while it does not need it,
        and ``init`` may return it released (FRUGAL's moments of a state-free tensor,
        ``LowRankAdam``): a saved or gathered buffer then has either shape, and a stacked
        parameter's buffers, which are sliced per matrix, are created at this size. Default:
        ``init``, no buffer is ever released."""
        return self.init(p)

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        """One update per parameter; a transform overrides it where batching pays."""
        apply = self.apply  # type: ignore[attr-defined]  # every concrete transform defines it
        return [apply(u, s, c) for u, s, c in zip(us, ss, cs, strict=True)]

    def apply_foreach(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        """``apply`` on each parameter of a group, written with multi-tensor ops
        (``torch._foreach_*``: a few kernel launches for the whole group instead of a few per
        parameter). An element-wise transform overrides it (``multi_tensor``) with the same
        operations as its ``apply``, so the results are equal bit for bit where the foreach
        kernels round as the single-tensor ones (always on CPU, whose foreach ops loop over
        the single-tensor kernels). ``cs`` share one param group's ``lr`` and weight decay."""
        apply = self.apply  # type: ignore[attr-defined]  # every concrete transform defines it
        return [apply(u, s, c) for u, s, c in zip(us, ss, cs, strict=True)]

    def apply_narrow(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        """``apply``, except that the update may come back in a narrower dtype whose values
        ``u.dtype`` holds exactly (a bfloat16 factor for a float32 ``u``): the final
        ``theta - lr u`` promotes it to the same numbers, without a copy back into ``u``.
        Called only where the final update is the next consumer, on the multi-tensor path
        (``Chain.apply_narrow_range``)."""
        return self.apply(u, s, c)  # type: ignore[attr-defined]  # every concrete transform has it

    def affine(self, c: Ctx) -> tuple[float, float] | None:
        """``(a, b)`` where this transform is ``u <- a u + b theta`` with numbers known from
        ``c`` alone (a shape scale, decoupled weight decay): a chain ending in such
        transforms folds them into its final update, ``theta (1 - lr b) - lr a u``
        (``Chain.fold_from``). ``None``: not of that form."""
        return None

    def validate(self, p: Tensor, name: str) -> None:
        """Raise ``ValueError`` if this transform cannot update ``p`` (checked at construction)."""

    def cost(self, shape: tuple[int, ...]) -> float:
        """Estimated FLOPs of one ``apply`` on a parameter of ``shape`` (periodic work such as a
        basis refresh amortised over its period): what load balancers and benchmarks weigh. The
        default, one FLOP per element, suits element-wise transforms."""
        return float(math.prod(shape))

    @property
    def moments(self) -> tuple[float, ...]:
        """The moment coefficients a param group exposes live (``momentum`` is the first,
        ``betas`` all of them), so torch schedulers can move them: ``()`` for none."""
        return ()

    # Capabilities: what the shell must do for this transform beyond calling ``apply``. Declared
    # here once; ``Chain``, ``Plan`` and ``Spec`` derive theirs from their transforms.

    @property
    def previous_point(self) -> str | None:
        """The buffer holding the parameter's previous value, where ``step(closure)`` evaluates
        the gradient a second time for ``Ctx.grad_at_previous`` (exact MARS); ``None``: no
        second evaluation."""
        return None

    @property
    def needs_closure(self) -> bool:
        """Whether ``step`` needs a closure: a second gradient evaluation per step, or a
        gradient with its graph for Hessian-vector products."""
        return self.previous_point is not None or self.needs_hvp

    @property
    def needs_hvp(self) -> bool:
        """Whether it reads ``Ctx.hvp``: ``step(closure)``, with a closure that calls
        ``loss.backward(create_graph=True)``, then differentiates the gradients once more
        along the probes of ``hvp_probe`` (``orthoptim.hvp``)."""
        return False

    def hvp_probe(self, p: Tensor, step: int, index: int = 0) -> Tensor | None:
        """The probe ``v`` (shaped and typed like ``p``) whose ``H v`` it reads at 1-based
        ``step``, or ``None`` where it reads none (the shell then skips the double backward).
        ``index``: the parameter's place among the optimizer's parameters (the param groups'
        order, every parameter counted), for probes that must be independent across
        parameters (OASIS's Hutchinson estimate). Must be a deterministic function of its
        arguments and the transform, so a resumed run draws the same probes."""
        return None

    @property
    def groupwise(self) -> bool:
        """Whether it works on a group's parameters together (its ``apply_many`` batches or
        relates them), so a chain holding it runs transform-major over the group: by default,
        whether the class overrides ``apply_many``."""
        return type(self).apply_many is not TransformBase.apply_many

    @property
    def route_wide(self) -> bool:
        """Whether its ``apply_many`` must see every parameter of its route at once, across
        the route's param groups (M-FAC's model-wide block): the shell then runs the route's
        groups through it together (``eager.run_route``), and a distributed step, whose owner
        ranks see only the parameters they own, refuses it."""
        return False

    @property
    def batches(self) -> bool:
        """Whether its ``apply_many`` batches a group's parameters when the step runs
        multi-tensor (``Ctx.multi_tensor``; Orthogonalize's same-shape Newton-Schulz), so the
        multi-tensor path runs the matrix core transform-major. Unlike ``groupwise``, the
        one-at-a-time path is unchanged."""
        return False

    @property
    def multi_tensor(self) -> bool:
        """Whether it has multi-tensor ops for a whole group (overrides ``apply_foreach``), used
        by ``ChainOptimizer(foreach=True)``. Unlike ``groupwise`` this never forces a chain
        transform-major: it is an execution choice, equal in result to ``apply``."""
        return type(self).apply_foreach is not TransformBase.apply_foreach

    @property
    def foldable(self) -> bool:
        """Whether ``affine`` describes it (it overrides ``affine``), so a chain may fold it."""
        return type(self).affine is not TransformBase.affine

    @property
    def needs_module(self) -> bool:
        """Whether it reads layer activations through module hooks (its ``capture``, attached
        by ``build`` to the ``nn.Module``): it cannot step on bare tensors, and each rank's
        hooks see only that rank's batch."""
        return False

    def with_moments(self: _T, moments: tuple[float, ...]) -> _T:
        """This transform with ``moments`` in place of its own (validated like the fields)."""
        raise TypeError(f"{type(self).__name__} has no moment coefficients")


class BetasMoments:
    """Moment coefficients from a ``betas`` field ``(b1, b2)`` (Adam, SOAP, Lion)."""

    __slots__ = ()
    betas: tuple[float, float]

    @property
    def moments(self) -> tuple[float, ...]:
        return tuple(self.betas)

    def with_moments(self: _BetasT, moments: tuple[float, ...]) -> _BetasT:
        betas = (float(moments[0]), float(moments[1]) if len(moments) > 1 else self.betas[1])
        return dataclasses.replace(self, betas=betas)  # type: ignore[type-var]


class MomentumMoments:
    """The moment coefficient from a ``momentum`` field (Shampoo's grafted momentum)."""

    __slots__ = ()
    momentum: float

    @property
    def moments(self) -> tuple[float, ...]:
        return (self.momentum,) if self.momentum else ()

    def with_moments(self: _MomentumT, moments: tuple[float, ...]) -> _MomentumT:
        return dataclasses.replace(self, momentum=float(moments[0]))  # type: ignore[type-var]
