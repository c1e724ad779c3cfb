"""Element-wise adaptive scaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_positive
from orthoptim._types import State
from orthoptim.functional.moments import adam_direction, ema_, ema_square_
from orthoptim.transforms.base import Ctx, TransformBase


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleByAdam(TransformBase):
    r"""Adam's direction (Kingma & Ba, arXiv 1412.6980), with bias correction.

    ``m <- b1 m + (1-b1) u``, ``v <- b2 v + (1-b2) u^2``,
    ``u <- (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``.

    State: ``exp_avg``, ``exp_avg_sq`` (torch.optim.Adam's names, same dtype as the parameter).

    Args:
        betas: ``(b1, b2)``, each in [0, 1).
        eps: added to the denominator, > 0.
    """

    key: ClassVar[str] = "adam"
    formula: ClassVar[str] = (
        r"m \leftarrow \beta_1 m + (1-\beta_1)u;\; v \leftarrow \beta_2 v + (1-\beta_2)u^2;\;"
        r"u \leftarrow \hat m / (\sqrt{\hat v} + \epsilon)"
    )
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            raise ValueError(f"betas must be a tuple (beta1, beta2), got {self.betas!r}")
        check_beta("betas[0]", self.betas[0])
        check_beta("betas[1]", self.betas[1])
        check_positive("eps", self.eps)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        return {
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        exp_avg = ema_(s["exp_avg"], u, self.betas[0])
        exp_avg_sq = ema_square_(s["exp_avg_sq"], u, self.betas[1])
        return adam_direction(exp_avg, exp_avg_sq, step=c.step, betas=self.betas, eps=self.eps)
