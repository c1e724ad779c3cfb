"""Gravity's velocity: a bounded per-entry force averaged with a step-dependent weight."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_positive
from orthoptim._types import State
from orthoptim.functional.first_order import (
    gravity_beta,
    gravity_force,
    gravity_initial_velocity,
)
from orthoptim.functional.moments import stats_dtype
from orthoptim.functional.projection import to_device
from orthoptim.transforms.base import Ctx, TransformBase

InitialVelocity = Literal["normal", "zero"]
INITIAL_VELOCITIES: tuple[str, ...] = get_args(InitialVelocity)
ScheduleOrigin = Literal["one", "zero"]
SCHEDULE_ORIGINS: tuple[str, ...] = get_args(ScheduleOrigin)


@dataclass(frozen=True, slots=True, kw_only=True)
class GravityVelocity(TransformBase):
    r"""Gravity's velocity (Bahrami & Zadeh 2021, arXiv 2101.09192, Algorithm 1).

    ``zeta = u / (1 + (u max|u|)^2)`` (``functional.first_order.gravity_force``: ``max`` over
    the whole tensor, so not element-wise), ``b_t = (beta t + 1) / (t + 2)``,
    ``v <- b_t v + (1 - b_t) zeta``, ``u <- v``. ``schedule_origin`` is the ``t`` of a tensor's
    first step: ``"one"`` (the authors' PyTorch implementation, pytorch-optimizer 4.1.0) or
    ``"zero"`` (the authors' Keras implementation, which ran the paper's experiments, and their
    notes' derivation: ``b = 1/2`` at the first step). ``initial_velocity="normal"`` (the paper, and
    pytorch-optimizer 4.1.0 ``Gravity``) draws ``v_0 ~ N(0, (alpha / lr)^2)`` at the tensor's
    first step; ``"zero"`` starts from ``v_0 = 0`` (then ``alpha`` is unused).

    The draw is seeded by ``seed`` and the tensor's position among its route's tensors
    (``Ctx.position``), so it is the same on every rank and in every run (the references draw
    from torch's global generator); it is made on the CPU and copied, and happens on the first
    step because ``lr`` is known only there; a first step at lr 0 (a warmup from 0, a frozen
    group) starts at rest instead (the references divide by zero there).

    State: ``v``, in ``stats_dtype``.

    Args:
        alpha: scale of the initial velocity's standard deviation (times ``1 / lr``), > 0.
        beta: the averaging weight's limit, in [0, 1).
        initial_velocity: ``"normal"`` or ``"zero"``.
        seed: seeds the initial velocity's draw.
        schedule_origin: ``"one"`` or ``"zero"``.
    """

    key: ClassVar[str] = "gravity"
    formula: ClassVar[str] = (
        r"\zeta = u / (1 + (u \max|u|)^2);\; b_t = (\beta t + 1)/(t + 2);\;"
        r"v \leftarrow b_t v + (1 - b_t)\zeta;\; u \leftarrow v"
    )
    alpha: float = 0.01
    beta: float = 0.9
    initial_velocity: InitialVelocity = "normal"
    seed: int = 0
    schedule_origin: ScheduleOrigin = "one"

    def __post_init__(self) -> None:
        check_positive("alpha", self.alpha)
        check_beta("beta", self.beta)
        check_choice("initial_velocity", self.initial_velocity, INITIAL_VELOCITIES)
        check_choice("schedule_origin", self.schedule_origin, SCHEDULE_ORIGINS)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def init(self, p: Tensor) -> dict[str, Tensor]:
        return {"v": torch.zeros_like(p, dtype=stats_dtype(p), memory_format=torch.preserve_format)}

    def cost(self, shape: tuple[int, ...]) -> float:
        return 6.0 * math.prod(shape)  # |u| max, square, add, divide, lerp, copy

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        v = s["v"]
        step = c.int_step
        # lr 0 at the first step (a warmup from 0, a frozen group) has no alpha / lr: start at
        # rest there (the references divide by zero); the step moves nothing anyway.
        lr = float(c.lr)
        if step == 1 and self.initial_velocity == "normal" and lr > 0:
            draw = gravity_initial_velocity(
                tuple(v.shape), self.alpha / lr, self.seed, c.position, v.dtype
            )
            v.copy_(to_device(draw, v.device))
        t = step if self.schedule_origin == "one" else step - 1
        v.lerp_(gravity_force(u.to(v.dtype)), 1.0 - gravity_beta(self.beta, t))
        return u.copy_(v)
