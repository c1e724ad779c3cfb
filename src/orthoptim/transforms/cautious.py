"""The cautious mask: keep only the update's entries that agree in sign with the gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from torch import Tensor

from orthoptim._checks import check_choice
from orthoptim._types import State
from orthoptim.functional.moments import stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase

CautiousRescale = Literal["mean_clamped", "plus_one", "at_least_one", "none"]
CAUTIOUS_RESCALES: tuple[str, ...] = get_args(CautiousRescale)

MIN_MEAN = 1e-3  # C-Optim's clamp: a mask keeping under 0.1% of entries scales by at most 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class CautiousMask(TransformBase):
    r"""``u <- s(mask) u * mask`` with ``mask = 1[u g > 0]`` (Liang et al., arXiv 2411.16085).

    ``g`` is the current raw gradient; the mask is formed from signs (not from the product, which
    underflows in 16 bits). The rescale ``s`` keeps the update's average size when entries drop:
      ``"mean_clamped"``: ``1 / max(mean(mask), 1e-3)`` (kyleliang919/C-Optim@2c0517c c_adamw.py
      and c_muon.py, after timm's variant);
      ``"plus_one"``: ``numel / (nnz + 1)`` (the paper's Algorithm, C-Optim c_lion.py,
      pytorch-optimizer 4.1.0 ``apply_cautious``);
      ``"at_least_one"``: ``numel / max(nnz, 1)`` (heavyball 3.2.1 ``caution``, whose mask is
      ``signbit(u) == signbit(g)``: it differs only where ``g`` or ``u`` is exactly 0);
      ``"none"``: 1.
    With every sign agreeing, ``"mean_clamped"``, ``"at_least_one"`` and ``"none"`` leave ``u``
    unchanged. The rescale reads the whole tensor, so the transform is not element-wise.

    State: none.

    Args:
        rescale: one of the rules above.
    """

    key: ClassVar[str] = "cautious"
    formula: ClassVar[str] = (
        r"\phi \leftarrow \mathbb{1}[u \odot g > 0];\; u \leftarrow s(\phi)\, u \odot \phi"
    )
    rescale: CautiousRescale = "mean_clamped"

    def __post_init__(self) -> None:
        check_choice("cautious rescale", self.rescale, CAUTIOUS_RESCALES)

    def cost(self, shape: tuple[int, ...]) -> float:
        return 5.0 * math.prod(shape)  # two signs, a compare, a count, a masked multiply

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        mask = (u.sign() * c.grad.sign()) > 0
        numel = mask.numel()
        if self.rescale == "none" or numel == 0:
            return u.mul_(mask)
        # float32 at least: a 16-bit count is inexact past 256 (bfloat16) or 2048 (float16)
        kept = mask.sum(dtype=stats_dtype(u))
        if self.rescale == "mean_clamped":
            scale = 1.0 / (kept / numel).clamp(min=MIN_MEAN)
        elif self.rescale == "plus_one":
            scale = numel / (kept + 1.0)
        else:
            scale = numel / kept.clamp(min=1.0)
        return u.mul_(mask).mul_(scale.to(u.dtype))
