"""Kronecker-factored preconditioners: Shampoo's inverse roots, Adam in Shampoo's eigenbasis (SOAP).

Both read a parameter as its matrix view ``(out, in*kh*kw)`` (``functional.polar.matrix_view``)
and keep a left factor ``L`` (rows x rows) and a right factor ``R`` (cols x cols); a side longer
than ``max_precond_dim`` gets no factor and is left unpreconditioned (the identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import (
    check_beta,
    check_betas,
    check_bool,
    check_choice,
    check_matrix,
    check_positive,
    check_positive_int,
)
from orthoptim._types import State
from orthoptim.functional.kron import (
    FACTOR_DTYPES,
    MATMUL_DTYPES,
    REFRESH_SCHEDULES,
    FactorDtype,
    MatmulDtype,
    RefreshSchedule,
    accumulate_,
    eigenbasis,
    factor_dtype,
    inverse_root,
    matmul_dtype,
    refresh_basis,
    refresh_due,
    rotate,
    unrotate,
)
from orthoptim.functional.moments import (
    EPS_PLACEMENTS,
    EpsPlacement,
    adam_direction,
    ema_,
    ema_square_,
)
from orthoptim.transforms.base import BetasMoments, Ctx, MomentumMoments, TransformBase

Grafting = Literal["adam", "none"]
GRAFTINGS: tuple[str, ...] = get_args(Grafting)
FirstStep = Literal["skip", "update"]
FIRST_STEPS: tuple[str, ...] = get_args(FirstStep)


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The ``(rows, cols)`` a parameter is preconditioned as; vectors and scalars are one row."""
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def _sides(shape: tuple[int, ...], max_dim: int) -> tuple[bool, bool]:
    """Which of the two factors exist: vectors get none, a side over ``max_dim`` gets none."""
    if len(shape) < 2:
        return False, False
    rows, cols = _matrix_shape(shape)
    return rows <= max_dim, cols <= max_dim


def _factor_init(
    p: Tensor, sides: tuple[bool, bool], dtype: torch.dtype, names: tuple[str, str]
) -> dict[str, Tensor]:
    rows, cols = _matrix_shape(tuple(p.shape))
    out: dict[str, Tensor] = {}
    pairs = (("L", names[0]), ("R", names[1]))
    for has, size, (factor, extra) in zip(sides, (rows, cols), pairs, strict=True):
        if has:
            out[factor] = torch.zeros(size, size, dtype=dtype, device=p.device)
            out[extra] = torch.zeros(size, size, dtype=dtype, device=p.device)
    return out


def _accumulate(g: Tensor, s: State, beta: float) -> None:
    """The factors' EMAs of ``G G^T`` and ``G^T G``; ``g`` may be a narrower copy of the
    gradient (``matmul_dtype``), whose products are cast up to the factors' dtype."""
    if "L" in s:
        accumulate_(s["L"], (g @ g.mT).to(s["L"].dtype), beta)
    if "R" in s:
        accumulate_(s["R"], (g.mT @ g).to(s["R"].dtype), beta)


def _cast(q: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if q is None else q.to(dtype)


def _check_factor_beta(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"factor_beta must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ShampooPrecondition(MomentumMoments, TransformBase):
    r"""Shampoo (Gupta et al., arXiv 1802.09568) as in Distributed Shampoo (arXiv 2309.06497).

    Per step, with ``G`` the incoming update's matrix view: ``L <- b L + (1-b) G G^T``,
    ``R <- b R + (1-b) G^T G`` (``factor_beta = 1``: plain sums); ``Gbar`` = bias-corrected EMA of
    ``G`` (``momentum``; 0: ``G``); at steps that are multiples of ``precondition_every``,
    ``L_inv = (L_hat + eps I)^{-1/root}`` (``L_hat = L / (1-b^t)``), same for ``R``. The direction
    is ``P = L_inv Gbar R_inv``; ``grafting="adam"`` rescales it to the norm of Adam's
    ``Gbar / (sqrt(v_hat) + graft_eps)`` (``v`` an EMA of ``G^2`` with ``graft_beta2``), and
    before the first refresh the direction is that Adam step itself (``"none"``: ``Gbar``).

    ``refresh_schedule="staggered"`` (not in the reference, which refreshes every factor at the
    same steps, ``"together"``; final losses within 10% of it on the convergence tests):
    the route's matrix ``i`` (``Ctx.position``) refreshes its roots at the steps ``t = i (mod
    precondition_every)`` instead (``functional.kron.refresh_due``), so no step pays for every
    ``eigh``; the roots are still used from step ``precondition_every`` on.

    State: ``L``, ``R``, ``L_inv``, ``R_inv`` (per preconditioned side), ``exp_avg`` (momentum
    > 0), ``graft_v`` (Adam grafting); in ``factor_dtype``.
    """

    key: ClassVar[str] = "shampoo"
    formula: ClassVar[str] = (
        r"L \mathrel{+}= GG^\top;\; R \mathrel{+}= G^\top G;\;"
        r"u \leftarrow \tfrac{\|A(\bar G)\|}{\|P\|}P,\; P = L^{-1/p}\bar G R^{-1/p}"
    )
    momentum: float = 0.9
    factor_beta: float = 0.999
    eps: float = 1e-12
    root: float = 4.0
    precondition_every: int = 10
    max_precond_dim: int = 1024
    grafting: Grafting = "adam"
    graft_beta2: float = 0.999
    graft_eps: float = 1e-8
    factor_dtype: FactorDtype = "auto"
    refresh_schedule: RefreshSchedule = "staggered"

    def __post_init__(self) -> None:
        check_beta("momentum", self.momentum)
        _check_factor_beta(self.factor_beta)
        check_positive("eps", self.eps)
        check_positive("root", self.root)
        check_positive_int("precondition_every", self.precondition_every)
        check_positive_int("max_precond_dim", self.max_precond_dim)
        check_choice("grafting", self.grafting, GRAFTINGS)
        check_beta("graft_beta2", self.graft_beta2)
        check_positive("graft_eps", self.graft_eps)
        check_choice("factor_dtype", self.factor_dtype, FACTOR_DTYPES)
        check_choice("refresh_schedule", self.refresh_schedule, REFRESH_SCHEDULES)

    def validate(self, p: Tensor, name: str) -> None:
        check_matrix(
            "ShampooPrecondition",
            tuple(p.shape),
            name,
            "route vectors to AdamW (build(..., model) does)",
        )

    def cost(self, shape: tuple[int, ...]) -> float:
        m, n = _matrix_shape(shape)
        left, right = _sides(shape, self.max_precond_dim)
        # Factor products and preconditioning products per side; eigh (~10 d^3) plus the root's
        # reconstruction (2 d^3) once per precondition_every steps.
        per_side = [(4 * m * m * n, 12 * m**3) if left else (0, 0)]
        per_side.append((4 * m * n * n, 12 * n**3) if right else (0, 0))
        return float(sum(a + b / self.precondition_every for a, b in per_side) + 12 * m * n)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = factor_dtype(p, self.factor_dtype)
        state = _factor_init(
            p, _sides(tuple(p.shape), self.max_precond_dim), dtype, ("L_inv", "R_inv")
        )
        if self.momentum > 0:
            state["exp_avg"] = torch.zeros(
                _matrix_shape(tuple(p.shape)), dtype=dtype, device=p.device
            )
        if self.grafting == "adam":
            state["graft_v"] = torch.zeros(
                _matrix_shape(tuple(p.shape)), dtype=dtype, device=p.device
            )
        return state

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        dtype = s["L"].dtype if "L" in s else factor_dtype(u, self.factor_dtype)
        g = u.reshape(_matrix_shape(tuple(u.shape))).to(dtype)
        _accumulate(g, s, self.factor_beta)
        if self.grafting == "adam":
            s["graft_v"].mul_(self.graft_beta2).addcmul_(g, g, value=1.0 - self.graft_beta2)
        gbar = g
        if self.momentum > 0:
            gbar = s["exp_avg"].lerp_(g, 1.0 - self.momentum) / (1.0 - self.momentum**c.step)
        if refresh_due(c.int_step, self.precondition_every, c.position, self.refresh_schedule):
            debias = 1.0 if self.factor_beta == 1.0 else 1.0 - self.factor_beta**c.step
            for factor, inv in (("L", "L_inv"), ("R", "R_inv")):
                if factor in s:
                    s[inv].copy_(inverse_root(s[factor] / debias, self.root, self.eps))
        graft = None
        if self.grafting == "adam":
            v_hat = s["graft_v"] / (1.0 - self.graft_beta2**c.step)
            graft = gbar / v_hat.sqrt_().add_(self.graft_eps)
        if c.step < self.precondition_every:
            direction = graft if graft is not None else gbar.clone()
        else:
            direction = unrotate(gbar, s.get("L_inv"), s.get("R_inv"))
            if graft is not None:
                scale = torch.linalg.vector_norm(graft) / (
                    torch.linalg.vector_norm(direction) + 1e-16
                )
                direction = direction * scale
        return direction.reshape(u.shape).to(u.dtype)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdamInEigenbasis(BetasMoments, TransformBase):
    r"""SOAP (Vyas et al., arXiv 2409.11321): Adam run in the eigenbasis of Shampoo's factors.

    ``L <- b L + (1-b) G G^T``, ``R <- b R + (1-b) G^T G`` (``b = shampoo_beta``); the first step
    sets ``Q_L, Q_R`` from ``eigh`` (decreasing eigenvalues); ``G' = Q_L^T G Q_R``; Adam's moments
    of ``G'`` give ``D'`` and the update is ``Q_L D' Q_R^T``. Every ``precondition_every`` Adam
    steps the bases are refreshed by one power-iteration step plus QR (``functional.kron``).

    Conventions (pinned to nikhilvyas/SOAP@a1e5535):
      ``first_step="skip"``: the first gradient only initialises the factors and bases, the step
      is zero (reference), for parameters that have a factor (vectors, and matrices with both
      sides over ``max_precond_dim``, take an Adam step: the reference skips them too);
      ``"update"``: the first gradient also gets an Adam step in the new basis.
      Factors are updated AFTER the step, so the current gradient never shapes its own basis.
      ``correct_bias``: Adam's bias correction, counted in Adam steps (``t - 1`` after a skip).
      ``eps_placement="raw"``: ``m / (sqrt(v) + eps)`` times ``sqrt(1-b2^t)/(1-b1^t)``
      (reference); ``"debiased"``: ``m_hat / (sqrt(v_hat) + eps)`` (torch.optim.Adam).
    Across a refresh (ARCHITECTURE 7.14.2): ``exp_avg`` lives in the rotated basis and is rotated
    into the new one (as the reference at a1e5535; equal, up to rounding, to keeping it in the
    original space and projecting it every step, as the reference before f42d296 and
    pytorch-optimizer do, since the rotation is linear and orthogonal: one projection fewer per
    step); ``exp_avg_sq`` is re-indexed by the sort of the estimated eigenvalues (reference): a
    second moment does not rotate linearly, so re-projection has no exact form. Vectors and
    scalars have no factors: exactly Adam.

    Speed options (not in the reference; the defaults differ from it, within 10% of its final
    loss on the convergence tests, ``tests/recipes/test_kronecker.py``):
      ``refresh_schedule="staggered"``: the route's matrix ``i`` (``Ctx.position``) refreshes at
      the Adam steps ``t = i (mod precondition_every)``, the same period at a different phase,
      so the
      refreshes (QR dominates them) spread over the period: the mean step is unchanged, the
      slowest drops; its first refresh can come before step ``precondition_every``.
      ``"together"``: every parameter at the multiples of ``precondition_every`` (reference).
      ``matmul_dtype="auto"``: the per-step products (the two rotations, ``G G^T`` and
      ``G^T G``) with bfloat16 operands, cast back up (relative error ~4e-3), several times
      faster on CPUs with AMX and on GPUs' tensor cores, where the factors are float32; in the
      factors' dtype where they are float64. ``"bfloat16"``: always; ``"factor"``: never
      (reference). Factors, bases, moments, ``eigh`` and the refresh (power step, QR,
      re-rotation of ``exp_avg``) stay in the factors' dtype.

    State: ``L``, ``Q_L``, ``R``, ``Q_R`` (per preconditioned side), ``exp_avg``, ``exp_avg_sq``
    (matrix view, rotated basis), in ``factor_dtype``.
    """

    key: ClassVar[str] = "soap"
    formula: ClassVar[str] = (
        r"G' = Q_L^\top G Q_R;\; u \leftarrow Q_L\,\mathrm{Adam}(G')\,Q_R^\top;\;"
        r"Q \leftarrow \mathrm{qr}(L Q) \text{ every } f"
    )
    betas: tuple[float, float] = (0.95, 0.95)
    shampoo_beta: float = 0.95
    eps: float = 1e-8
    precondition_every: int = 10
    max_precond_dim: int = 10_000
    first_step: FirstStep = "skip"
    correct_bias: bool = True
    eps_placement: EpsPlacement = "raw"
    factor_dtype: FactorDtype = "auto"
    refresh_schedule: RefreshSchedule = "staggered"
    matmul_dtype: MatmulDtype = "auto"

    def __post_init__(self) -> None:
        check_betas("betas", self.betas)
        check_beta("shampoo_beta", self.shampoo_beta)
        check_positive("eps", self.eps)
        check_positive_int("precondition_every", self.precondition_every)
        check_positive_int("max_precond_dim", self.max_precond_dim)
        check_choice("first_step", self.first_step, FIRST_STEPS)
        check_bool("correct_bias", self.correct_bias)
        check_choice("eps_placement", self.eps_placement, EPS_PLACEMENTS)
        check_choice("factor_dtype", self.factor_dtype, FACTOR_DTYPES)
        check_choice("refresh_schedule", self.refresh_schedule, REFRESH_SCHEDULES)
        check_choice("matmul_dtype", self.matmul_dtype, MATMUL_DTYPES)

    def cost(self, shape: tuple[int, ...]) -> float:
        m, n = _matrix_shape(shape)
        left, right = _sides(shape, self.max_precond_dim)
        # Per side: factor update, rotate, unrotate (6 d^2 k); refresh: L Q, QR, the two
        # rotations of exp_avg (~4 d^3 + 4 d^2 k) once per precondition_every steps.
        total = 12.0 * m * n
        if left:
            total += 6 * m * m * n + (4 * m**3 + 4 * m * m * n) / self.precondition_every
        if right:
            total += 6 * m * n * n + (4 * n**3 + 4 * m * n * n) / self.precondition_every
        return total

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = factor_dtype(p, self.factor_dtype)
        state = _factor_init(p, _sides(tuple(p.shape), self.max_precond_dim), dtype, ("Q_L", "Q_R"))
        shape = _matrix_shape(tuple(p.shape))
        state["exp_avg"] = torch.zeros(shape, dtype=dtype, device=p.device)
        state["exp_avg_sq"] = torch.zeros(shape, dtype=dtype, device=p.device)
        return state

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        g = u.reshape(exp_avg.shape).to(exp_avg.dtype)
        low = matmul_dtype(exp_avg.dtype, self.matmul_dtype)
        g_low = g.to(low)
        # Only a parameter with a basis to initialise skips: the skip keeps the first gradient out
        # of its own basis, and without factors there is nothing to keep it out of.
        skip = self.first_step == "skip" and ("L" in s or "R" in s)
        if c.step == 1:
            _accumulate(g_low, s, self.shampoo_beta)
            for factor, basis in (("L", "Q_L"), ("R", "Q_R")):
                if factor in s:
                    s[basis].copy_(eigenbasis(s[factor]))
            if skip:
                return u.zero_()
        t = c.int_step - 1 if skip else c.int_step
        # One narrow copy of each basis serves both rotations of this step.
        ql, qr = _cast(s.get("Q_L"), low), _cast(s.get("Q_R"), low)
        b1, b2 = self.betas
        projected = rotate(g_low, ql, qr).to(exp_avg.dtype)
        ema_(exp_avg, projected, b1)
        ema_square_(exp_avg_sq, projected, b2)
        if not self.correct_bias:
            direction = exp_avg / exp_avg_sq.sqrt().add_(self.eps)
        else:
            direction = adam_direction(
                exp_avg,
                exp_avg_sq,
                step=t,
                betas=self.betas,
                eps=self.eps,
                eps_placement=self.eps_placement,
            )
        out = unrotate(direction.to(low), ql, qr).reshape(u.shape).to(u.dtype)
        if c.step > 1:
            _accumulate(g_low, s, self.shampoo_beta)
            if refresh_due(t, self.precondition_every, c.position, self.refresh_schedule):
                self._refresh(s)
        return out

    @staticmethod
    def _refresh(s: State) -> None:
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        original = unrotate(exp_avg, s.get("Q_L"), s.get("Q_R"))
        for dim, (factor, basis) in enumerate((("L", "Q_L"), ("R", "Q_R"))):
            if factor in s:
                q, order = refresh_basis(s[factor], s[basis])
                s[basis].copy_(q)
                exp_avg_sq.copy_(exp_avg_sq.index_select(dim, order))
        exp_avg.copy_(rotate(original, s.get("Q_L"), s.get("Q_R")))
