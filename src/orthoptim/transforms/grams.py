"""Grams' decoupling of direction and magnitude: the gradient's sign, the update's size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from orthoptim._types import State
from orthoptim.transforms.base import Ctx, TransformBase


@dataclass(frozen=True, slots=True, kw_only=True)
class AlignToGradientSign(TransformBase):
    r"""``u <- sign(g) |u|`` with ``g`` the current raw gradient (Grams, arXiv 2412.17107).

    After ``ScaleByAdam`` the magnitude is Adam's and the direction the current gradient's
    sign (Cao et al., Algorithm 1). Where ``g = 0`` the update is 0, as in both references
    (``sign(0) = 0``). Where the signs already agree the update is unchanged, so Grams equals Adam
    on a step whose Adam update has the gradient's sign everywhere.

    State: none.
    """

    key: ClassVar[str] = "grams"
    elementwise: ClassVar[bool] = True
    formula: ClassVar[str] = r"u \leftarrow \operatorname{sign}(g) \odot |u|"

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return u.abs_().mul_(c.grad.sign())

    def apply_foreach(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        torch._foreach_abs_(us)
        torch._foreach_mul_(us, torch._foreach_sign([c.grad for c in cs]))
        return us
