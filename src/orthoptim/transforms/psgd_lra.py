"""PSGD LRA: a low-rank-plus-diagonal preconditioner fitted on a Lie group."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import (
    check_beta,
    check_choice,
    check_positive,
    check_positive_int,
)
from orthoptim._types import State
from orthoptim.functional.kron import FACTOR_DTYPES, FactorDtype, factor_dtype
from orthoptim.functional.psgd import (
    BALANCE_STREAM,
    UpdateRule,
    host_uniform,
    probe,
    updates_at,
)
from orthoptim.functional.psgd_lra import balance_, init_scale, precondition, update_
from orthoptim.transforms.base import Ctx, TransformBase
from orthoptim.transforms.mfac import BLOCKS, Blocks
from orthoptim.transforms.psgd import (
    CURVATURES,
    Curvature,
    HvpProbes,
    UpdateOrder,
    WhitenInput,
    check_shared_options,
)

StepNormalizer = Literal["2nd", "1st"]
STEP_NORMALIZERS: tuple[str, ...] = get_args(StepNormalizer)

_UV_STREAM = 2  # host_uniform stream of the choice between a step of U and one of V
_INIT_STEP = 0  # the probe "step" whose draw initialises U and V (steps count from 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class PSGDLRAPrecondition(HvpProbes, TransformBase):
    r"""PSGD with the low-rank approximation preconditioner ``Q = (I + U V^T) diag(d)``
    (Li, arXiv 1512.04202; Pooladzandi and Li, arXiv 2402.11858, "Curvature-Informed SGD via
    General Purpose Lie-Group Preconditioners"), ``P = Q^T Q`` over a flattened block.

    Per step, with ``g`` the incoming update flattened: ``m <- b m + (1-b) g``,
    ``M = m / (1 - b^t)`` (``momentum`` 0: ``M = g``); on an update step (``update_rule``
    over the ``prob_*`` schedule, as ``PSGDKronPrecondition``; the defaults update at every
    step, the reference's probability 1) ``U, V`` are balanced with probability
    ``balance_prob``, then ``d`` and one of ``U``, ``V`` (probability 1/2 each) take one
    Lie-group step (``functional.psgd_lra.update_``, normalised by ``step_normalizer``) on the
    pair ``(h, v)``: ``curvature="whitening"``, ``h`` = ``M`` or ``g`` (``whiten``) and
    ``v ~ N(0, I)``; ``"finite_difference"``, ``(g_t - g_{t-1}, theta_t - theta_{t-1})`` (none
    at the first step); ``"hvp"``, ``(H v, v)`` from ``Ctx.hvp`` (``orthoptim.hvp``; per
    parameter blocks only). The direction ``P M`` is scaled by
    ``min(1, clip_rms / (rms(P M) + 1e-6))``, the rms over the block.

    Blocks (``blocks``): ``"parameter"``, a preconditioner per parameter (runs under a
    distributed step); ``"model"``, the reference's one preconditioner over every parameter
    of the route (``route_wide``, as ``MFacPrecondition``; each parameter keeps its rows of
    ``U``, ``V`` and its entries of ``d``, and every product over the block sums the
    parameters' parts). ``"model"`` needs every parameter in one process and a gradient for
    each at every step (``ValueError`` otherwise).

    Initialisation: at the block's first step ``U`` and ``V`` are drawn from
    ``N(0, 1 / (N (rank + 10)))`` (the reference's, ``N`` the block's size; ``||U V^T||`` well
    below 1) by a generator seeded by ``seed``; ``d`` is ``precond_init_scale`` or, with
    ``None`` (the reference's default), ``(v^T v / h^T h)^{1/4}`` at the first fitting pair.
    Randomness (probes, the balance and U-or-V decisions) comes from the step and ``seed``
    (``functional.psgd.probe``, ``host_uniform``), so a resumed run repeats it; the probe of
    a block is one draw split into its parameters' pieces.

    State per parameter (``factor_dtype``): ``U``, ``V`` (numel x rank), ``d`` (numel),
    ``exp_avg`` (``momentum`` > 0), ``prev_param``, ``prev_grad`` (finite differences).
    """

    key: ClassVar[str] = "psgd_lra"
    formula: ClassVar[str] = (
        r"Q = (I + UV^\top)\,\mathrm{diag}(d),\; d \leftarrow d - \mu\, d \odot "
        r"(Ph \odot h - v \odot P^{-1}v);\; u \leftarrow Q^\top Q M"
    )
    rank: int = 10
    blocks: Blocks = "parameter"
    momentum: float = 0.9
    precond_lr: float = 0.1
    step_normalizer: StepNormalizer = "2nd"
    curvature: Curvature = "whitening"
    whiten: WhitenInput = "gradient"
    update_rule: UpdateRule = "counter"
    update_order: UpdateOrder = "update_first"
    prob_max: float = 1.0
    prob_min: float = 1.0
    prob_decay: float = 0.001
    prob_flat_start: int = 500
    balance_prob: float = 0.01
    precond_init_scale: float | None = None
    clip_rms: float = 1.1
    seed: int = 0
    factor_dtype: FactorDtype = "auto"

    def __post_init__(self) -> None:
        check_positive_int("rank", self.rank)
        check_choice("blocks", self.blocks, BLOCKS)
        check_beta("momentum", self.momentum)
        check_positive("precond_lr", self.precond_lr)
        check_choice("step_normalizer", self.step_normalizer, STEP_NORMALIZERS)
        check_choice("curvature", self.curvature, CURVATURES)
        if self.curvature == "hvp" and self.blocks == "model":
            # The shell draws each parameter's probe from its shape and the step, so parameters
            # of one shape get equal probes: pieces of one block's v would be correlated.
            raise ValueError(
                "psgd_lra curvature='hvp' needs blocks='parameter' (the probes of a model-wide "
                "block would repeat across parameters of one shape); allowed curvatures with "
                "blocks='model': 'whitening', 'finite_difference'"
            )
        check_shared_options(self)
        if self.precond_init_scale is not None:
            check_positive("precond_init_scale", self.precond_init_scale)
        check_positive("clip_rms", self.clip_rms)
        check_choice("factor_dtype", self.factor_dtype, FACTOR_DTYPES)

    @property
    def route_wide(self) -> bool:
        return self.blocks == "model"

    def cost(self, shape: tuple[int, ...]) -> float:
        # P M: four N x r products; an update: about eight more, at most every step.
        return float(24 * self.rank * math.prod(shape))

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = factor_dtype(p, self.factor_dtype)
        n = p.numel()
        zeros = torch.zeros(n, dtype=dtype, device=p.device)
        # U and V are drawn at the block's first step (their scale needs the block's size).
        state = {
            "U": torch.zeros(n, self.rank, dtype=dtype, device=p.device),
            "V": torch.zeros(n, self.rank, dtype=dtype, device=p.device),
            "d": torch.full_like(zeros, self.precond_init_scale or 1.0),
        }
        if self.momentum > 0:
            state["exp_avg"] = zeros.clone()
        if self.curvature == "finite_difference":
            state["prev_param"] = zeros.clone()
            state["prev_grad"] = zeros.clone()
        return state

    def updates_at(self, step: int) -> bool:
        """Whether ``step`` (1-based) updates the preconditioner; the first fitting pair
        always does (it sets the scale of ``d``)."""
        if step == self._first_fit:
            return True
        schedule = (self.prob_max, self.prob_min, self.prob_decay, self.prob_flat_start)
        return updates_at(self.update_rule, step, self.seed, *schedule)

    @property
    def _first_fit(self) -> int:
        return 2 if self.curvature == "finite_difference" else 1

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self._apply_block([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        if self.blocks == "model":
            return self._apply_block(us, ss, cs)
        return [self._apply_block([u], [s], [c])[0] for u, s, c in zip(us, ss, cs, strict=True)]

    def _apply_block(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        if not us:
            return us
        steps = [int(c.step) for c in cs]
        if len(set(steps)) > 1:
            counts = {c.name or f"#{i}": t for i, (c, t) in enumerate(zip(cs, steps, strict=True))}
            raise ValueError(
                "psgd_lra blocks='model' needs a gradient for every parameter of the route at "
                f"every step (one preconditioner over all of them); their step counts differ: "
                f"{counts}. Give every parameter a gradient (zero for an unused one), or use "
                "blocks='parameter'"
            )
        dtypes = {s["d"].dtype for s in ss}
        if len(dtypes) > 1:
            raise ValueError(
                f"psgd_lra blocks='model' needs one factor dtype over the block, got {dtypes}; "
                "pass factor_dtype, or use blocks='parameter'"
            )
        step = steps[0]
        dtype = ss[0]["d"].dtype
        gs = [u.reshape(-1).to(dtype) for u in us]
        ms = gs
        if self.momentum > 0:
            ms = []
            for g, s in zip(gs, ss, strict=True):
                s["exp_avg"].mul_(self.momentum).add_(g, alpha=1.0 - self.momentum)
                ms.append(s["exp_avg"] / (1.0 - self.momentum**step))
        if step == 1:
            self._draw_uv(ss)
        pair = self._pairs(gs, ms, ss, cs, step)
        update = pair is not None and self.updates_at(step)
        if pair is not None and update and self.update_order == "update_first":
            self._update(ss, pair, step)
        directions = precondition([s["U"] for s in ss], [s["V"] for s in ss], _ds(ss), ms)
        if pair is not None and update and self.update_order == "precondition_first":
            self._update(ss, pair, step)
        n = sum(x.numel() for x in directions)
        rms = (torch.stack([x.square().sum() for x in directions]).sum() / n).sqrt()
        scale = torch.clamp(self.clip_rms / (rms + 1e-6), max=1.0)
        return [
            x.mul_(scale).view(u.shape).to(u.dtype) for x, u in zip(directions, us, strict=True)
        ]

    def _draw_uv(self, ss: Sequence[State]) -> None:
        """``U`` and ``V`` of the block from one ``N x 2 rank`` draw, split by parameter."""
        d0 = ss[0]["d"]
        n = sum(s["d"].numel() for s in ss)
        draw = probe((n, 2 * self.rank), self.seed, _INIT_STEP, d0.dtype, d0.device)
        draw.mul_(1.0 / math.sqrt(n * (self.rank + 10)))
        start = 0
        for s in ss:
            rows = draw[start : start + s["d"].numel()]
            start += s["d"].numel()
            s["U"].copy_(rows[:, : self.rank])
            s["V"].copy_(rows[:, self.rank :])

    def _pairs(
        self,
        gs: list[Tensor],
        ms: list[Tensor],
        ss: Sequence[State],
        cs: Sequence[Ctx],
        step: int,
    ) -> tuple[list[Tensor], list[Tensor] | None] | None:
        """The block's fitting pair ``(h, v)`` as pieces: ``(M or g, None)`` for whitening
        (``None``: the step's probe); ``(g_t - g_{t-1}, theta_t - theta_{t-1})`` for finite
        differences, ``None`` at the first step (it only records ``theta_1, g_1``)."""
        if self.curvature == "whitening":
            return (ms if self.whiten == "momentum" else gs), None
        if self.curvature == "hvp":
            if any(c.hvp is None for c in cs):
                self.check_hvp_given(step)
                return None
            pairs = [c.hvp for c in cs if c.hvp is not None]
            return [h.reshape(-1).to(g.dtype) for (_, h), g in zip(pairs, gs, strict=True)], [
                v.reshape(-1).to(g.dtype) for (v, _), g in zip(pairs, gs, strict=True)
            ]
        hs, vs = [], []
        for g, s, c in zip(gs, ss, cs, strict=True):
            theta = c.param.reshape(-1).to(g.dtype)
            hs.append(g - s["prev_grad"])
            vs.append(theta - s["prev_param"])
            s["prev_param"].copy_(theta)
            s["prev_grad"].copy_(g)
        return (hs, vs) if step > 1 else None

    def _update(
        self, ss: Sequence[State], pair: tuple[list[Tensor], list[Tensor] | None], step: int
    ) -> None:
        hs, vs = pair
        if vs is None:
            h0 = hs[0]
            draw = probe((sum(h.numel() for h in hs),), self.seed, step, h0.dtype, h0.device)
            vs = list(draw.split([h.numel() for h in hs]))
        us_, vs_, ds = [s["U"] for s in ss], [s["V"] for s in ss], _ds(ss)
        if step == self._first_fit and self.precond_init_scale is None:
            scale = init_scale(hs, None if self.curvature == "whitening" else vs)
            for d in ds:
                d.copy_(scale.expand_as(d))
        if host_uniform(self.seed, step, BALANCE_STREAM) < self.balance_prob:
            balance_(us_, vs_)
        update_u = host_uniform(self.seed, step, _UV_STREAM) < 0.5
        update_(us_, vs_, ds, hs, vs, self.precond_lr, self.step_normalizer, update_u)


def _ds(ss: Sequence[State]) -> list[Tensor]:
    """The block's ``d`` pieces."""
    return [s["d"] for s in ss]
