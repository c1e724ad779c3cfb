"""Sign updates with momentum: Lion's interpolated sign."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from orthoptim._checks import check_betas
from orthoptim._types import State
from orthoptim.functional.moments import ema_, stats_dtype
from orthoptim.transforms.base import BetasMoments, Ctx, TransformBase


@dataclass(frozen=True, slots=True, kw_only=True)
class LionSign(BetasMoments, TransformBase):
    r"""Lion's update (Chen et al., arXiv 2302.06675), without the decay.

    ``u <- sign(b1 m + (1-b1) u)``, then ``m <- b2 m + (1-b2) u``. With ``b1 == b2`` the output
    is the sign of the updated EMA (signSGD with EMA momentum, "Signum"): MARS-Lion's update in
    AGI-Arena/MARS. ``sign(0) = 0``, so a zero gradient on zero momentum gives a zero update.

    State: ``exp_avg`` (pytorch-optimizer's name), float32 for 16-bit parameters, where an EMA
    in 16 bits stalls once ``(1-b2) u`` is below half an ulp of ``m``.

    Args:
        betas: ``(b1, b2)``, each in [0, 1): the interpolation of the update and the EMA
            coefficient of the momentum.
    """

    key: ClassVar[str] = "lion"
    elementwise: ClassVar[bool] = True
    formula: ClassVar[str] = (
        r"u \leftarrow \mathrm{sign}(\beta_1 m + (1-\beta_1) u);\;"
        r"m \leftarrow \beta_2 m + (1-\beta_2) u"
    )
    betas: tuple[float, float] = (0.9, 0.99)

    def __post_init__(self) -> None:
        check_betas("betas", self.betas)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = stats_dtype(p)
        return {"exp_avg": torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)}

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        exp_avg = s["exp_avg"]
        g = u.to(exp_avg.dtype)
        # The same lerp for both, so b1 == b2 gives sign(m_t) bit for bit.
        direction = torch.lerp(exp_avg, g, 1.0 - self.betas[0])
        ema_(exp_avg, g, self.betas[1])
        return u.copy_(direction.sign_())

    def apply_foreach(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        exp_avgs = [s["exp_avg"] for s in ss]
        gs = [u.to(m.dtype) for u, m in zip(us, exp_avgs, strict=True)]
        directions = torch._foreach_lerp(exp_avgs, gs, 1.0 - self.betas[0])
        torch._foreach_lerp_(exp_avgs, gs, 1.0 - self.betas[1])  # ema_
        torch._foreach_sign_(directions)
        torch._foreach_copy_(us, directions)
        return us
