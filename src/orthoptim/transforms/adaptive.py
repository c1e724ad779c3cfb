"""Element-wise adaptive scaling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from orthoptim._checks import check_betas, check_bool, check_choice, check_positive
from orthoptim._types import State
from orthoptim.functional.moments import (
    EPS_PLACEMENTS,
    EpsPlacement,
    adam_direction,
    adam_direction_foreach,
    ema_,
    ema_square_,
    stats_dtype,
)
from orthoptim.transforms.base import BetasMoments, Ctx, TransformBase


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleByAdam(BetasMoments, TransformBase):
    r"""Adam's direction (Kingma & Ba, arXiv 1412.6980), with bias correction.

    ``m <- b1 m + (1-b1) u``, ``v <- b2 v + (1-b2) u^2``, numerator ``n = m`` (or with
    ``nesterov`` the look-ahead ``b1 m + (1-b1) u``, clovaai/AdamP), then
    ``eps_placement="debiased"``: ``u <- (n / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``
    (torch.optim.Adam, clovaai/AdamP), or ``"raw"``: ``u <- (n / (1-b1^t)) sqrt(1-b2^t) /
    (sqrt(v) + eps)`` (Gunale0926/Grams, C-Optim, HF transformers AdamW): the two differ only
    through ``eps``.

    State: ``exp_avg``, ``exp_avg_sq`` (torch.optim.Adam's names), in the parameter's dtype, and
    in float32 for 16-bit parameters: in float16, ``u^2`` underflows to 0 for ``|u| < 2.4e-4``
    while ``m`` does not, and ``eps = 1e-8`` rounds to 0, so ``m / (sqrt(v) + eps)`` overflows
    (torch.optim.AdamW keeps them in the parameter's dtype, and does).

    Args:
        betas: ``(b1, b2)``, each in [0, 1).
        eps: added to the denominator, > 0.
        eps_placement: ``"debiased"`` or ``"raw"``.
        nesterov: use the look-ahead numerator ``b1 m + (1-b1) u``.
    """

    key: ClassVar[str] = "adam"
    elementwise: ClassVar[bool] = True
    capturable: ClassVar[bool] = True
    formula: ClassVar[str] = (
        r"m \leftarrow \beta_1 m + (1-\beta_1)u;\; v \leftarrow \beta_2 v + (1-\beta_2)u^2;\;"
        r"u \leftarrow \hat m / (\sqrt{\hat v} + \epsilon)"
    )
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eps_placement: EpsPlacement = "debiased"
    nesterov: bool = False

    def __post_init__(self) -> None:
        check_betas("betas", self.betas)
        check_positive("eps", self.eps)
        check_choice("eps_placement", self.eps_placement, EPS_PLACEMENTS)
        check_bool("nesterov", self.nesterov)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = stats_dtype(p)
        return {
            "exp_avg": torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format),
        }

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        g = u.to(exp_avg.dtype)
        ema_(exp_avg, g, self.betas[0])
        ema_square_(exp_avg_sq, g, self.betas[1])
        numerator = exp_avg.lerp(g, 1.0 - self.betas[0]) if self.nesterov else exp_avg
        same_dtype = u.dtype == exp_avg.dtype
        # The direction goes into u, the chain's working copy, when the dtypes allow (a faster
        # adamw step: benchmarks/records/2026-11-25_step-speed).
        direction = adam_direction(
            numerator,
            exp_avg_sq,
            step=c.step,
            betas=self.betas,
            eps=self.eps,
            eps_placement=self.eps_placement,
            out=u if same_dtype else None,
        )
        return direction if same_dtype else direction.to(u.dtype)

    def apply_foreach(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        exp_avgs = [s["exp_avg"] for s in ss]
        exp_avg_sqs = [s["exp_avg_sq"] for s in ss]
        gs = [u.to(m.dtype) for u, m in zip(us, exp_avgs, strict=True)]
        b1, b2 = self.betas
        torch._foreach_lerp_(exp_avgs, gs, 1.0 - b1)  # ema_
        torch._foreach_mul_(exp_avg_sqs, b2)  # ema_square_
        torch._foreach_addcmul_(exp_avg_sqs, gs, gs, value=1.0 - b2)
        numerators = torch._foreach_lerp(exp_avgs, gs, 1.0 - b1) if self.nesterov else exp_avgs
        directions = adam_direction_foreach(
            numerators,
            exp_avg_sqs,
            steps=[c.int_step for c in cs],
            betas=self.betas,
            eps=self.eps,
            eps_placement=self.eps_placement,
            # the square roots into the working copies where the dtypes allow, as ``apply``
            out=us if all(u.dtype == m.dtype for u, m in zip(us, exp_avgs, strict=True)) else None,
        )
        return [
            d if d.dtype == u.dtype else d.to(u.dtype) for d, u in zip(directions, us, strict=True)
        ]
