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

ShapeRule = Literal["keller", "moonlight_rms", "constant_rms", "none"]
SHAPE_RULES: tuple[str, ...] = get_args(ShapeRule)


CONSTANT_RMS = 0.2
"""The update RMS ``"constant_rms"`` sets (NorMuon's paper, as Moonlight's AdamW match)."""


def shape_factor(rule: str, rows: int, cols: int) -> float:
    """The update multiplier a shape rule gives a ``rows x cols`` matrix (``"constant_rms"``:
    the numerator of its factor, ``0.2 sqrt(rows cols)``, which the update's norm divides)."""
    if rule == "keller":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "moonlight_rms":
        return 0.2 * math.sqrt(max(rows, cols))
    if rule == "constant_rms":
        return CONSTANT_RMS * math.sqrt(rows * cols)
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
      ``"constant_rms"``: ``0.2 sqrt(rows cols) / ||u||_F``, so every update has RMS 0.2
      whatever its norm (NorMuon's paper, arXiv 2510.05491, Algorithm 1 line 10: ``eta_hat = 0.2
      eta sqrt(m n) / ||O||_F``; the authors' code keeps Muon's ``"keller"`` factor instead,
      zichongli5/NorMuon issues #6, #9). The only rule that reads the update, so it is not
      folded into the final step and runs on the full matrix (distributed: on its owner); a
      zero update stays zero.
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

    @property
    def foldable(self) -> bool:
        """A number known from the shape alone, except ``"constant_rms"``'s, which reads ``u``."""
        return self.rule != "constant_rms"

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        if self.rule == "none":
            return u
        rows = u.shape[0]
        factor = shape_factor(self.rule, rows, u.numel() // rows)
        if self.rule == "constant_rms":
            wide = torch.promote_types(u.dtype, torch.float32)  # 16-bit sums in float32
            norm = torch.linalg.vector_norm(u, dtype=wide)
            # on the device, no host read; a zero update times a finite factor stays zero
            return u.mul_(factor / norm.clamp_min(torch.finfo(wide).tiny))
        return u if factor == 1.0 else u.mul_(factor)

    def affine(self, c: Ctx) -> tuple[float, float] | None:
        """``(f, 0)`` with ``f`` the rule's factor for the parameter's ``(out, in)`` matrix;
        ``None`` for ``"constant_rms"`` (not foldable)."""
        if self.rule == "constant_rms":
            return None
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
