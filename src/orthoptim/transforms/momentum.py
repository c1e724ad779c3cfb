"""Momentum on the incoming update."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_bool, check_choice
from orthoptim._types import State
from orthoptim.functional.moments import ema_
from orthoptim.transforms.base import Ctx, TransformBase

MomentumKind = Literal["ema", "sum"]
MOMENTUM_KINDS: tuple[str, ...] = get_args(MomentumKind)


@dataclass(frozen=True, slots=True, kw_only=True)
class Momentum(TransformBase):
    r"""Heavy-ball or Nesterov momentum.

    ``kind="ema"``: ``m <- beta m + (1 - beta) u`` (KellerJordan/Muon, torch.optim.Muon code).
    ``kind="sum"``: ``m <- beta m + u`` (torch.optim.SGD with dampening 0).
    The output is ``m``, or with ``nesterov`` the look-ahead ``u + beta (m - u)`` for ``"ema"``
    and ``u + beta m`` for ``"sum"``. With zero initial state the ``"ema"`` output is exactly
    ``(1 - beta)`` times the ``"sum"`` output, with or without Nesterov.

    State: ``m`` (same shape and dtype as the parameter).

    Args:
        beta: momentum coefficient in [0, 1).
        kind: ``"ema"`` or ``"sum"``.
        nesterov: use the Nesterov look-ahead instead of ``m``.
    """

    key: ClassVar[str] = "momentum"
    elementwise: ClassVar[bool] = True
    capturable: ClassVar[bool] = True
    formula: ClassVar[str] = (
        r"m \leftarrow \beta m + (1-\beta)u \text{ (ema) or } \beta m + u \text{ (sum)};\;"
        r"u \leftarrow \text{nesterov} ? u + \beta(m - u) \text{ (ema) or } u + \beta m : m"
    )
    beta: float = 0.9
    kind: MomentumKind = "ema"
    nesterov: bool = False

    def __post_init__(self) -> None:
        check_beta("momentum beta", self.beta)
        check_choice("momentum kind", self.kind, MOMENTUM_KINDS)
        check_bool("nesterov", self.nesterov)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        return {"m": torch.zeros_like(p, memory_format=torch.preserve_format)}

    @property
    def moments(self) -> tuple[float, ...]:
        return (self.beta,)

    def with_moments(self, moments: tuple[float, ...]) -> Momentum:
        return dataclasses.replace(self, beta=float(moments[0]))

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        m = s["m"]
        if self.kind == "ema":
            ema_(m, u, self.beta)
            return u.lerp_(m, self.beta) if self.nesterov else u.copy_(m)
        m.mul_(self.beta).add_(u)
        return u.add_(m, alpha=self.beta) if self.nesterov else u.copy_(m)
