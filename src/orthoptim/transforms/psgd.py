"""PSGD Kron: a Kronecker-factored preconditioner fitted on a Lie group (``functional.psgd``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, get_args

import torch
from torch import Tensor

from orthoptim._checks import (
    check_beta,
    check_choice,
    check_finite_nonnegative,
    check_matrix,
    check_positive,
    check_positive_int,
)
from orthoptim._types import State
from orthoptim.functional.kron import FACTOR_DTYPES, FactorDtype, factor_dtype
from orthoptim.functional.psgd import (
    BALANCE_STREAM,
    MEMORY_SAVE_MODES,
    UPDATE_RULES,
    MemorySaveMode,
    UpdateRule,
    balance_,
    host_uniform,
    precondition,
    probe,
    triangular_sides,
    update_factors_,
    update_factors_procrustes_,
    updates_at,
    whitening_pair,
)
from orthoptim.transforms.base import Ctx, MomentumMoments, TransformBase
from orthoptim.transforms.kronecker import _matrix_shape

Curvature = Literal["whitening", "hvp", "finite_difference"]
CURVATURES: tuple[str, ...] = get_args(Curvature)
UpdateOrder = Literal["update_first", "precondition_first"]
UPDATE_ORDERS: tuple[str, ...] = get_args(UpdateOrder)
Geometry = Literal["EQ", "Q0.5EQ1.5"]
GEOMETRIES: tuple[str, ...] = get_args(Geometry)
WhitenInput = Literal["momentum", "gradient"]
WHITEN_INPUTS: tuple[str, ...] = get_args(WhitenInput)


class SharedOptions(Protocol):
    """The options PSGD's preconditioners share (``PSGDKronPrecondition``,
    ``PSGDLRAPrecondition``)."""

    # Read-only: the preconditioners are frozen dataclasses, their fields narrower Literals.
    @property
    def curvature(self) -> str: ...

    @property
    def whiten(self) -> str: ...

    @property
    def momentum(self) -> float: ...

    @property
    def update_rule(self) -> str: ...

    @property
    def update_order(self) -> str: ...

    @property
    def prob_max(self) -> float: ...

    @property
    def prob_min(self) -> float: ...

    @property
    def prob_decay(self) -> float: ...

    @property
    def prob_flat_start(self) -> int: ...

    @property
    def balance_prob(self) -> float: ...

    @property
    def seed(self) -> int: ...


def check_shared_options(t: SharedOptions) -> None:
    """``ValueError`` for an invalid whitening input, update rule, order, probability
    schedule, balance probability or seed (the options PSGD's preconditioners share)."""
    check_choice("whiten", t.whiten, WHITEN_INPUTS)
    if t.curvature == "whitening" and t.whiten == "momentum" and t.momentum == 0:
        raise ValueError("whiten='momentum' needs momentum > 0; use whiten='gradient'")
    check_choice("update_rule", t.update_rule, UPDATE_RULES)
    check_choice("update_order", t.update_order, UPDATE_ORDERS)
    if isinstance(t.seed, bool) or not isinstance(t.seed, int):
        raise ValueError(f"seed must be an integer, got {t.seed!r}")
    check_positive("prob_max", t.prob_max)
    check_positive("prob_min", t.prob_min)
    if not t.prob_min <= t.prob_max <= 1.0:
        raise ValueError(
            f"need 0 < prob_min <= prob_max <= 1, got prob_min={t.prob_min!r}, "
            f"prob_max={t.prob_max!r}"
        )
    check_finite_nonnegative("prob_decay", t.prob_decay)
    if isinstance(t.prob_flat_start, bool) or not isinstance(t.prob_flat_start, int):
        raise ValueError(f"prob_flat_start must be an integer, got {t.prob_flat_start!r}")
    check_finite_nonnegative("balance_prob", t.balance_prob)
    if t.balance_prob > 1:
        raise ValueError(f"balance_prob must be in [0, 1], got {t.balance_prob!r}")


class HvpProbes:
    """What PSGD's preconditioners share for ``curvature="hvp"``: the probe the shell
    differentiates along (``TransformBase.hvp_probe``) on their update steps, and the error
    where an update step got no product. A mixin without fields (empty ``__slots__``), listed
    before ``TransformBase``."""

    __slots__ = ()
    curvature: str
    seed: int
    # Each preconditioner's own update schedule (declared for the type checker only).
    updates_at: Callable[[int], bool]

    @property
    def needs_hvp(self) -> bool:
        return self.curvature == "hvp"

    def hvp_probe(self, p: Tensor, step: int, index: int = 0) -> Tensor | None:
        """The step's probe, shaped like ``p`` (``functional.psgd.probe``), on update steps;
        the same for every ``index`` (each preconditioner is fitted on its own)."""
        if not self.needs_hvp or not self.updates_at(step):
            return None
        return probe(tuple(p.shape), self.seed, step, p.dtype, p.device)

    def check_hvp_given(self, step: int) -> None:
        """``ValueError`` where ``step`` updates the preconditioner and the shell computed no
        Hessian-vector product (the optimizer was stepped without a closure's graph)."""
        if self.updates_at(step):
            raise ValueError(
                "curvature='hvp' updates the preconditioner at this step and got no "
                "Hessian-vector product: step it with ChainOptimizer.step(closure), the "
                "closure calling loss.backward(create_graph=True)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class PSGDKronPrecondition(HvpProbes, MomentumMoments, TransformBase):
    r"""PSGD with the Kronecker (affine Lie group) preconditioner, gradient whitening
    (Li, arXiv 1512.04202; Pooladzandi and Li, arXiv 2402.11858, "Curvature-Informed SGD via
    General Purpose Lie-Group Preconditioners").

    Per step, with ``G`` the incoming update's matrix view (``(out, in*kh*kw)``):
    ``m <- b m + (1-b) G``, ``M = m / (1 - b^t)`` (``momentum`` 0: ``M = G``); on an update step
    (``update_rule`` over the probability schedule) the factors take one EQ step
    (``functional.psgd.update_factors_``) on the pair ``(H, V)``, ``H`` = ``M`` or ``G``
    (``whiten``) and ``V ~ N(0, I)`` the probe; the direction is
    ``P M = Q_L^T Q_L M Q_R^T Q_R``, scaled by ``min(1, clip_rms / (rms(P M) + 1e-6))``.
    ``curvature="finite_difference"`` (the paper's BFGS-like source) fits the factors to the
    pair ``(V, H) = (theta_t - theta_{t-1}, g_t - g_{t-1})`` instead (``P -> |Hessian|^{-1}``
    on a quadratic; no update at the first step, which has no pair); ``"hvp"`` (the paper's
    Newton source, psgd_torch's ``preconditioner_type="Newton"``) to ``(V, H) = (v, Hess v)``
    with ``v`` the step's probe and ``Hess v`` its Hessian-vector product, which
    ``ChainOptimizer.step(closure)`` evaluates (``orthoptim.hvp``: the closure calls
    ``loss.backward(create_graph=True)``; one double backward, on update steps only):
    ``P E[Hess v v^T Hess] P = E[v v^T] = I``, so ``P -> |Hess|^{-1}``.
    ``update_order="update_first"``: the factors are updated before ``P M`` (the references');
    ``"precondition_first"``: after (psgd_torch's unbiased variant).

    Update probability (the Kron references' schedule): ``p(t) = clamp(prob_max
    exp(-prob_decay (t - 1 - prob_flat_start)), prob_min, prob_max)``. ``update_rule="counter"``
    (kron_torch, pytorch-optimizer): a counter reaching ``1/p(t)`` triggers an update, so it is
    a deterministic function of the step; ``"bernoulli"`` (psgd_torch): an update with
    probability ``p(t)``, drawn on the host from ``(seed, step)``. With probability
    ``balance_prob`` an update step first rescales the factors to equal max-norms (drawn the
    same way). The probe comes from a generator on the parameter's device seeded by
    ``(seed, step)``, the same draw for every parameter of a step. Every decision is thus a
    function of the step: a resumed run repeats it, and no device value is read on the host.

    Factors: a side of size 1, over ``max_size_triangular``, or chosen by ``memory_save_mode``
    is a diagonal (a vector), the others upper triangular matrices, initialised to ``I``
    (``precond_init_scale`` 1).

    State: ``Q_L``, ``Q_R`` (matrices or vectors), ``exp_avg`` (``momentum`` > 0),
    ``prev_param``, ``prev_grad`` (finite differences), in ``factor_dtype``.
    """

    key: ClassVar[str] = "psgd_kron"
    formula: ClassVar[str] = (
        r"Q \leftarrow Q - \tfrac{\mu}{\|AA^\top + BB^\top\|}"
        r"\,\mathrm{triu}(AA^\top - BB^\top) Q;\;"
        r"u \leftarrow Q_L^\top Q_L M Q_R^\top Q_R"
    )
    momentum: float = 0.9
    precond_lr: float = 0.1
    curvature: Curvature = "whitening"
    geometry: Geometry = "EQ"
    lipschitz_beta: float = 0.9
    damping: float = 1e-9
    whiten: WhitenInput = "momentum"
    update_rule: UpdateRule = "counter"
    update_order: UpdateOrder = "update_first"
    prob_max: float = 1.0
    prob_min: float = 0.03
    prob_decay: float = 0.001
    prob_flat_start: int = 500
    balance_prob: float = 0.01
    max_size_triangular: int = 8192
    memory_save_mode: MemorySaveMode = "none"
    clip_rms: float = 1.1
    seed: int = 0
    factor_dtype: FactorDtype = "auto"

    def __post_init__(self) -> None:
        check_beta("momentum", self.momentum)
        check_positive("precond_lr", self.precond_lr)
        check_choice("curvature", self.curvature, CURVATURES)
        check_choice("geometry", self.geometry, GEOMETRIES)
        if self.geometry != "EQ" and self.curvature != "whitening":
            raise ValueError(
                f"geometry={self.geometry!r} is implemented for curvature='whitening' only, got "
                f"curvature={self.curvature!r}"
            )
        check_beta("lipschitz_beta", self.lipschitz_beta)
        check_positive("damping", self.damping)
        check_shared_options(self)
        check_positive_int("max_size_triangular", self.max_size_triangular)
        check_choice("memory_save_mode", self.memory_save_mode, MEMORY_SAVE_MODES)
        check_positive("clip_rms", self.clip_rms)
        check_choice("factor_dtype", self.factor_dtype, FACTOR_DTYPES)

    def validate(self, p: Tensor, name: str) -> None:
        check_matrix(
            "PSGDKronPrecondition",
            tuple(p.shape),
            name,
            "route vectors to AdamW (build(..., model) does)",
        )

    def cost(self, shape: tuple[int, ...]) -> float:
        m, n = _matrix_shape(shape)
        # Preconditioning: four products (~4 mn(m+n)); an update: A, the two solves, four
        # Gram products (~8 mn(m+n)), at most every step.
        return float(12 * m * n * (m + n))

    def sides(self, shape: tuple[int, ...]) -> tuple[bool, bool]:
        """Which factors are triangular matrices for a parameter of ``shape``."""
        rows, cols = _matrix_shape(shape)
        return triangular_sides(rows, cols, self.max_size_triangular, self.memory_save_mode)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = factor_dtype(p, self.factor_dtype)
        shape = _matrix_shape(tuple(p.shape))
        state: dict[str, Tensor] = {}
        for name, size, matrix in zip(
            ("Q_L", "Q_R"), shape, self.sides(tuple(p.shape)), strict=True
        ):
            state[name] = (
                torch.eye(size, dtype=dtype, device=p.device)
                if matrix
                else torch.ones(size, dtype=dtype, device=p.device)
            )
        if self.momentum > 0:
            state["exp_avg"] = torch.zeros(shape, dtype=dtype, device=p.device)
        if self.geometry == "Q0.5EQ1.5":
            state["lipschitz"] = torch.zeros(2, dtype=torch.float32, device=p.device)
        if self.curvature == "finite_difference":
            state["prev_param"] = torch.zeros(shape, dtype=dtype, device=p.device)
            state["prev_grad"] = torch.zeros(shape, dtype=dtype, device=p.device)
        return state

    def updates_at(self, step: int) -> bool:
        """Whether ``step`` (1-based) updates the preconditioner."""
        schedule = (self.prob_max, self.prob_min, self.prob_decay, self.prob_flat_start)
        return updates_at(self.update_rule, step, self.seed, *schedule)

    def balances_at(self, step: int) -> bool:
        """Whether an update at ``step`` first balances the factors."""
        return host_uniform(self.seed, step, BALANCE_STREAM) < self.balance_prob

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        ql, qr = s["Q_L"], s["Q_R"]
        g = u.reshape(_matrix_shape(tuple(u.shape))).to(ql.dtype)
        m = g
        if self.momentum > 0:
            s["exp_avg"].mul_(self.momentum).add_(g, alpha=1.0 - self.momentum)
            m = s["exp_avg"] / (1.0 - self.momentum**c.step)
        step = int(c.step)
        pair = self._pair(g, m, s, c, step)
        update = pair is not None and self.updates_at(step)
        if pair is not None and update and self.update_order == "update_first":
            self._update(ql, qr, pair, s, step)
        direction = precondition(ql, qr, m)
        if pair is not None and update and self.update_order == "precondition_first":
            self._update(ql, qr, pair, s, step)
        rms = direction.square().mean().sqrt()
        direction.mul_(torch.clamp(self.clip_rms / (rms + 1e-6), max=1.0))
        return direction.reshape(u.shape).to(u.dtype)

    def _pair(self, g: Tensor, m: Tensor, s: State, c: Ctx, step: int) -> _Pair | None:
        """The ``(V, H)`` the factors are fitted to at this step: ``(probe, M or G)`` for
        whitening; ``(v, Hess v)`` from ``c.hvp`` for Hessian-vector products (none off the
        update steps, where the shell draws no probe); ``(theta_t - theta_{t-1},
        g_t - g_{t-1})`` for finite differences (none at the first step, which only records
        ``theta_1, g_1``)."""
        if self.curvature == "whitening":
            h = m if self.whiten == "momentum" else g
            return _Pair(h, None)
        if self.curvature == "hvp":
            if c.hvp is None:
                self.check_hvp_given(step)
                return None
            v, hv = (x.reshape(g.shape).to(g.dtype) for x in c.hvp)
            return _Pair(hv, v)
        theta = c.param.reshape(g.shape).to(g.dtype)
        pair = None
        if step > 1:
            pair = _Pair(g - s["prev_grad"], theta - s["prev_param"])
        s["prev_param"].copy_(theta)
        s["prev_grad"].copy_(g)
        return pair

    def _update(self, ql: Tensor, qr: Tensor, pair: _Pair, s: State, step: int) -> None:
        h, v = pair.h, pair.v
        if v is None:
            v = probe(tuple(h.shape), self.seed, step, h.dtype, h.device)
        if self.geometry == "Q0.5EQ1.5":
            # psgd_torch balances after this geometry's step, kron_torch before its EQ step.
            update_factors_procrustes_(
                ql, qr, s["lipschitz"], h, v, self.precond_lr, self.lipschitz_beta, self.damping
            )
            if self.balances_at(step):
                balance_(ql, qr)
            return
        if self.balances_at(step):
            balance_(ql, qr)
        a, b = whitening_pair(ql, qr, h, v)
        update_factors_(ql, qr, a, b, self.precond_lr)


@dataclass(frozen=True, slots=True)
class _Pair:
    """A fitting pair: ``h`` (gradient, momentum, gradient difference or Hessian-vector
    product) and ``v`` (the parameter difference or the shell's probe; ``None``: the step's
    probe)."""

    h: Tensor
    v: Tensor | None
