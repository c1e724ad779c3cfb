"""Kronecker factors on structured SPD submanifolds with Riemannian momentum (``spd_momentum``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_positive, check_positive_int
from orthoptim._types import State
from orthoptim.functional.kron import REFRESH_SCHEDULES, RefreshSchedule, refresh_due
from orthoptim.functional.spd import (
    SPD_FACTOR_DTYPES,
    STRUCTURES,
    SpdFactorDtype,
    Structure,
    local_gradients,
    move_,
    outer_product,
    precondition,
    spd_factor_dtype,
)
from orthoptim.transforms.base import Ctx, TransformBase
from orthoptim.transforms.capture import ActivationCapture

CovWarmup = Literal["reference", "none"]
COV_WARMUPS: tuple[str, ...] = get_args(CovWarmup)


def factor_lr(lr_cov: float, step: int, warmup: str) -> float:
    """The factors' step size at the 0-based optimizer step ``step``: ``"reference"`` is the
    reference's schedule (``LocalOptimizer._update_local``: 2e-4 up to step 100, 2e-3 below
    step 500, then ``lr_cov`` = 1e-2), written as 0.02 and 0.2 times ``lr_cov`` so that it
    scales with it; ``"none"`` is ``lr_cov`` from the start (SINGD's constant ``lr_cov``)."""
    if warmup == "none" or step >= 500:
        return lr_cov
    return lr_cov * (0.02 if step <= 100 else 0.2)


@dataclass(frozen=True, slots=True, kw_only=True)
class SPDPrecondition(TransformBase):
    r"""``u <- C C^T G K K^T`` with the factors ``K`` (input side), ``C`` (output side) moved by
    ``functional.spd`` every ``update_every`` steps.

    From the capture's K-FAC statistics ``S_K = A^T A / n`` of the layer input and
    ``S_C = n G_out^T G_out`` of the output gradient (``ActivationCapture(statistics=
    "covariance")``): local gradients ``g_K``, ``g_C`` (``functional.spd.local_gradients``),
    Riemannian momentum ``m <- alpha1 m + g`` and ``K <- K - beta1 K m_K``, ``C <- C - beta1
    C m_C`` with ``beta1 = factor_lr(lr_cov, step - 1, cov_warmup)``; then ``P_K = K K^T``,
    ``P_C = C C^T`` are cached for the steps until the next update (the reference's ``faster``
    path). Updates happen at steps ``1, 1 + T, 1 + 2T, ...`` (``refresh_schedule="together"``,
    the reference's) or staggered by the matrix's position. A step without statistics (hooks
    missed) or whose update is not finite keeps the factors and momenta as they were (selected
    on the device).

    State (``structure="dense"``): ``K``, ``m_K``, ``P_K`` (in x in), ``C``, ``m_C``, ``P_C``
    (out x out); ``"diagonal"``: the same as vectors. In ``factor_dtype``.
    """

    key: ClassVar[str] = "spd"
    formula: ClassVar[str] = (
        r"m_K \leftarrow \alpha_1 m_K + \Pi(g_K);\; K \leftarrow K(I - \beta_1 m_K);\;"
        r"u \leftarrow C C^\top G K K^\top"
    )
    structure: Structure = "dense"
    damping: float = 1e-3
    riemannian_momentum: float = 0.5
    lr_cov: float = 1e-2
    cov_warmup: CovWarmup = "reference"
    update_every: int = 10
    refresh_schedule: RefreshSchedule = "together"
    factor_dtype: SpdFactorDtype = "auto"
    capture: ActivationCapture = field(
        default_factory=partial(ActivationCapture, statistics="covariance"),
        repr=False,
        compare=False,
    )

    @property
    def needs_module(self) -> bool:
        return True

    def __post_init__(self) -> None:
        check_choice("structure", self.structure, STRUCTURES)
        check_positive("damping", self.damping)
        check_beta("riemannian_momentum", self.riemannian_momentum)
        check_positive("lr_cov", self.lr_cov)
        check_choice("cov_warmup", self.cov_warmup, COV_WARMUPS)
        check_positive_int("update_every", self.update_every)
        check_choice("refresh_schedule", self.refresh_schedule, REFRESH_SCHEDULES)
        check_choice("factor_dtype", self.factor_dtype, SPD_FACTOR_DTYPES)
        if self.capture.statistics != "covariance":
            raise ValueError("SPDPrecondition needs an ActivationCapture(statistics='covariance')")

    def validate(self, p: Tensor, name: str) -> None:
        if p.ndim < 2:
            raise ValueError(
                f"spd_momentum preconditions matrices; {name or 'a parameter'} is {p.ndim}-D"
            )

    def init(self, p: Tensor) -> dict[str, Tensor]:
        rows, cols = p.shape[0], p.numel() // max(p.shape[0], 1)
        dtype, device = spd_factor_dtype(p, self.factor_dtype), p.device
        state = {}
        for side, d in (("K", cols), ("C", rows)):
            eye = (
                torch.eye(d, dtype=dtype, device=device)
                if self.structure == "dense"
                else torch.ones(d, dtype=dtype, device=device)
            )
            state[side] = eye
            state[f"m_{side}"] = torch.zeros_like(eye)
            state[f"P_{side}"] = eye.clone()
        return state

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        k, cf = s["K"], s["C"]
        stats = self.capture.take(c.parameter)  # always taken: a skipped step drops its stats
        due = refresh_due(c.int_step - 1, self.update_every, c.position, self.refresh_schedule)
        if (
            due
            and stats is not None
            and (stats[0].shape[0], stats[1].shape[0])
            == (
                k.shape[0],
                cf.shape[0],
            )
        ):
            self._update(s, stats[0], stats[1], int(c.step) - 1)
        g = u.reshape(u.shape[0], -1).to(k.dtype)
        out = precondition(g, s["P_C"], s["P_K"], self.structure)
        return u.copy_(out.view_as(u))

    def _update(self, s: State, stat_k: Tensor, stat_c: Tensor, step: int) -> None:
        beta = factor_lr(self.lr_cov, step, self.cov_warmup)
        new = {name: s[name].clone() for name in ("K", "C", "m_K", "m_C")}
        g_k, g_c = local_gradients(new["K"], new["C"], stat_k, stat_c, self.damping, self.structure)
        move_(new["K"], new["m_K"], g_k, self.riemannian_momentum, beta, self.structure)
        move_(new["C"], new["m_C"], g_c, self.riemannian_momentum, beta, self.structure)
        ok = torch.isfinite(new["K"]).all() & torch.isfinite(new["C"]).all()
        for name, value in new.items():
            torch.where(ok, value, s[name], out=s[name])
        s["P_K"].copy_(outer_product(s["K"], self.structure))
        s["P_C"].copy_(outer_product(s["C"], self.structure))

    def cost(self, shape: tuple[int, ...]) -> float:
        rows, cols = shape[0], math.prod(shape[1:])
        if self.structure == "diagonal":
            return 4.0 * rows * cols
        # the two products every step; the factor update (about 8 d^3 per side) amortised
        update = 8.0 * (rows**3 + cols**3) / self.update_every
        return 2.0 * rows * cols * (rows + cols) + update
