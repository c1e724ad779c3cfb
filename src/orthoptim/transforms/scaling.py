"""Shape-dependent scaling and weight decay."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_choice, check_matrix
from orthoptim._types import State
from orthoptim.functional.layout import matrix_shape
from orthoptim.transforms.base import Ctx, TransformBase

ShapeRule = Literal["keller", "moonlight_rms", "none"]
SHAPE_RULES: tuple[str, ...] = get_args(ShapeRule)


def shape_factor(rule: str, rows: int, cols: int) -> float:
    """The update multiplier a shape rule gives a ``rows x cols`` matrix."""
    if rule == "keller":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "moonlight_rms":
        return 0.2 * math.sqrt(max(rows, cols))
    if rule == "none":
        return 1.0
    raise ValueError(f"shape rule must be one of {SHAPE_RULES}, got {rule!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleByShape(TransformBase):
    r"""``u <- f(rows, cols) u`` for the update's matrix view ``(out, in*kh*kw)``.

    Rules:
      ``"keller"``: ``sqrt(max(1, rows/cols))`` (KellerJordan/Muon; torch.optim.Muon "original").
      ``"moonlight_rms"``: ``0.2 sqrt(max(rows, cols))``, matching AdamW's update RMS (Moonlight,
      arXiv 2502.16982; torch.optim.Muon "match_rms_adamw").
      ``"none"``: 1.
    """

    key: ClassVar[str] = "shape_scale"
    capturable: ClassVar[bool] = True
    formula: ClassVar[str] = r"u \leftarrow s(\text{rows}, \text{cols})\, u"
    rule: ShapeRule = "keller"

    def __post_init__(self) -> None:
        check_choice("shape_scale", self.rule, SHAPE_RULES)

    def validate(self, p: Tensor, name: str) -> None:
        if self.rule != "none":
            check_matrix(f"shape_scale={self.rule!r}", tuple(p.shape), name)

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        if self.rule == "none":
            return u
        rows = u.shape[0]
        factor = shape_factor(self.rule, rows, u.numel() // rows)
        return u if factor == 1.0 else u.mul_(factor)

    def affine(self, c: Ctx) -> tuple[float, float]:
        """``(f, 0)`` with ``f`` the rule's factor for the parameter's ``(out, in)`` matrix."""
        if self.rule == "none":
            return 1.0, 0.0
        (rows, *rest), _ = matrix_shape(tuple(c.param.shape), c.layout)
        return shape_factor(self.rule, rows, math.prod(rest)), 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AddWeightDecay(TransformBase):
    r"""``u <- u + lambda theta`` with ``lambda`` the group's ``weight_decay``.

    After the shell's ``theta <- theta - lr u`` this is decoupled decay ``theta (1 - lr lambda)``
    when placed last in a chain (AdamW, Muon), and L2 regularisation when placed before a
    momentum or adaptive transform (torch.optim.SGD).
    """

    key: ClassVar[str] = "weight_decay"
    elementwise: ClassVar[bool] = True
    capturable: ClassVar[bool] = True
    formula: ClassVar[str] = r"u \leftarrow u + \lambda \theta"

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return u.add_(c.param, alpha=c.weight_decay) if c.weight_decay != 0 else u

    def apply_foreach(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        decay = cs[0].weight_decay if cs else 0.0
        if decay != 0:
            torch._foreach_add_(us, [c.param for c in cs], alpha=decay)
        return us

    def affine(self, c: Ctx) -> tuple[float, float]:
        """``(1, lambda)``: folded, ``theta (1 - lr lambda) - lr u`` (torch's AdamW and Muon)."""
        return 1.0, c.weight_decay
