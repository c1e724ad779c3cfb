"""Variance reduction of the incoming gradient: MARS's scaled stochastic recursive momentum."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_finite_nonnegative, check_positive
from orthoptim._types import State
from orthoptim.functional.moments import stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase

MarsVariant = Literal["approximate", "exact"]
MARS_VARIANTS: tuple[str, ...] = get_args(MarsVariant)
FirstStep = Literal["zero_previous", "uncorrected"]
FIRST_STEPS: tuple[str, ...] = get_args(FirstStep)


@dataclass(frozen=True, slots=True, kw_only=True)
class MarsCorrection(TransformBase):
    r"""MARS's corrected gradient (Yuan et al., arXiv 2411.10438).

    ``c = u + gamma beta1/(1-beta1) (u - g_prev)``, then ``c <- c clip/||c||_F`` where
    ``||c||_F > clip``. ``g_prev`` is, for ``variant="approximate"``, the previous step's incoming
    gradient (on the previous batch), and for ``"exact"`` the gradient at the previous step's
    parameters on the CURRENT batch, ``c.grad_at_previous``, which ``ChainOptimizer.step(closure)``
    evaluates (a second forward and backward pass; it raises without a closure). On a
    parameter's first step ``"zero_previous"`` takes ``g_prev = 0`` (AGI-Arena/MARS, heavyball,
    pytorch-optimizer: ``c = (1 + gamma beta1/(1-beta1)) u``) and ``"uncorrected"`` takes
    ``g_prev = u`` (the paper's ``x_1 = x_0``: ``c = u``).

    State: ``prev_grad`` (approximate) or ``prev_param``, the parameters where the shell evaluates
    the closure next step (exact); one tensor like the parameter either way.

    Args:
        gamma: correction strength, >= 0 (0 with ``clip=None`` leaves ``u`` unchanged).
        beta1: the momentum coefficient of the optimizer it feeds, in [0, 1).
        clip: the Frobenius norm ``c`` is rescaled down to, per tensor; ``None``: no clipping.
        variant: ``"approximate"`` or ``"exact"``.
        first_step: ``"zero_previous"`` or ``"uncorrected"``.
    """

    key: ClassVar[str] = "mars"
    formula: ClassVar[str] = (
        r"c \leftarrow u + \gamma \tfrac{\beta_1}{1-\beta_1}(u - g_{\mathrm{prev}});\;"
        r"u \leftarrow c \min(1, \mathrm{clip} / \|c\|_F)"
    )
    gamma: float = 0.025
    beta1: float = 0.95
    clip: float | None = 1.0
    variant: MarsVariant = "approximate"
    first_step: FirstStep = "zero_previous"

    def __post_init__(self) -> None:
        check_finite_nonnegative("gamma", self.gamma)
        check_beta("beta1", self.beta1)
        if self.clip is not None:
            check_positive("clip", self.clip)
        check_choice("variant", self.variant, MARS_VARIANTS)
        check_choice("first_step", self.first_step, FIRST_STEPS)

    @property
    def previous_point(self) -> str | None:
        """``prev_param`` for ``"exact"``: ``step(closure)`` evaluates the gradient there."""
        return "prev_param" if self.variant == "exact" else None

    def init(self, p: Tensor) -> dict[str, Tensor]:
        if self.variant == "exact":  # x_0 = x_1 as in the paper; overwritten by every apply
            return {"prev_param": p.detach().clone(memory_format=torch.preserve_format)}
        return {"prev_grad": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def cost(self, shape: tuple[int, ...]) -> float:
        return 6.0 * math.prod(shape)  # difference, scale, add, squared norm, rescale

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        if self.variant == "exact":
            previous = c.grad_at_previous
            if previous is None and c.step > 1:
                raise RuntimeError(
                    "MarsCorrection(variant='exact') needs the gradient at the previous "
                    "parameters on the current batch: step with ChainOptimizer.step(closure)"
                )
            s["prev_param"].copy_(c.param)
        else:
            previous = s["prev_grad"]  # zeros before the first step
        if c.step == 1 and self.first_step == "uncorrected":
            previous = u
        elif previous is None:
            previous = torch.zeros_like(u)
        scale = self.gamma * (self.beta1 / (1.0 - self.beta1))
        # The reference's operation order, (g - g_prev) * scale + g.
        corrected = torch.sub(u, previous).mul_(scale).add_(u)
        if self.variant == "approximate":
            s["prev_grad"].copy_(u)  # a copy: aliasing p.grad is the reference's bug
        if self.clip is not None:
            # No host sync: dividing by 1 where ||c|| <= clip is exact; for clip = 1 the divisor
            # is ||c|| itself, bit for bit the reference's c / ||c||. The norm of 16-bit updates
            # is taken in float32, where their squares cannot overflow.
            norm = torch.linalg.vector_norm(corrected, dtype=stats_dtype(corrected))
            corrected.div_(norm.div_(self.clip).clamp_(min=1.0))
        return corrected
