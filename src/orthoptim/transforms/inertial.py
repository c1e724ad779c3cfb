"""INNAprop's parts: RMSprop's bias-corrected scaling and INNA's inertial Newton dynamics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_finite_nonnegative, check_positive
from orthoptim._types import State
from orthoptim.functional.moments import bias_correction, ema_square_, stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase

DecayPoint = Literal["decayed", "current"]
DECAY_POINTS: tuple[str, ...] = get_args(DecayPoint)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleByRms(TransformBase):
    r"""RMSprop's scaling with Adam's bias correction (Tieleman & Hinton 2012; Kingma & Ba,
    arXiv 1412.6980): ``v <- beta v + (1 - beta) u^2``, ``u <- u / (sqrt(v / (1 - beta^t)) +
    eps)``, the operation order of torch.optim.Adam's denominator. ``ScaleByAdam`` with
    ``b1 = 0`` computes the same numbers but keeps a first moment it does not need.

    State: ``exp_avg_sq``, in ``stats_dtype``.

    Args:
        beta: the second moment's coefficient, in [0, 1).
        eps: added to the bias-corrected root, > 0.
    """

    key: ClassVar[str] = "rms"
    elementwise: ClassVar[bool] = True
    formula: ClassVar[str] = (
        r"v \leftarrow \beta v + (1-\beta) u^2;\; u \leftarrow u / (\sqrt{\hat v} + \epsilon)"
    )
    beta: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        check_beta("beta", self.beta)
        check_positive("eps", self.eps)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = stats_dtype(p)
        return {"exp_avg_sq": torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)}

    def cost(self, shape: tuple[int, ...]) -> float:
        return 5.0 * math.prod(shape)

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        v = s["exp_avg_sq"]
        g = u.to(v.dtype)
        ema_square_(v, g, self.beta)
        denom = v.sqrt().div_(math.sqrt(bias_correction(self.beta, c.int_step))).add_(self.eps)
        return u.div_(denom) if g is u else u.copy_(g.div_(denom))


@dataclass(frozen=True, slots=True, kw_only=True)
class InertialNewton(TransformBase):
    r"""INNA's inertial Newton step on a scaled gradient ``u`` (INNAprop: Bolte, Boustany,
    Pauwels, Purica et al. 2024, arXiv 2410.05871, Algorithm 1; the DIN dynamics of Alvarez et
    al. discretised with step ``lr``).

    With ``theta'`` the parameter the step starts from and ``psi`` INNA's auxiliary variable
    (initialised to ``(1 - alpha beta) theta_0``):
    ``psi <- (1 - lr / beta) psi + lr (1 / beta - alpha) theta'`` and
    ``u <- beta u + (psi - (1 - alpha beta) theta') / (beta - lr)``, so that the shell's
    ``theta' - lr u`` is the reference's ``(1 + lr (1 - alpha beta) / (beta - lr)) theta' -
    lr / (beta - lr) psi - lr beta u``. ``decay_point="decayed"`` (innaprop/innaprop@d4bef0c,
    which multiplies ``theta`` by ``1 - lr lambda`` before the step): ``theta' = (1 - lr lambda)
    theta`` with ``lambda`` the group's weight decay, for a chain that adds ``lambda theta``
    after this transform (``AddWeightDecay``); ``"current"``: ``theta' = theta`` (the decay then
    only adds, as AdamW's; the two differ by ``O(lr^2 lambda)`` per step).

    Needs ``lr < beta`` (the discretisation's denominator ``beta - lr``): ``ValueError``
    otherwise. ``lr`` enters the update itself, so a schedule changes the dynamics, as in the
    reference.

    State: ``psi``, in ``stats_dtype``.

    Args:
        alpha: INNA's viscous damping, >= 0.
        beta: INNA's Newton damping, > 0.
        decay_point: ``"decayed"`` or ``"current"``.
    """

    key: ClassVar[str] = "inna"
    elementwise: ClassVar[bool] = True
    formula: ClassVar[str] = (
        r"\psi \leftarrow (1 - \tfrac{\gamma}{\beta})\psi + \gamma(\tfrac1\beta - \alpha)\theta;\;"
        r"u \leftarrow \beta u + \tfrac{\psi - (1 - \alpha\beta)\theta}{\beta - \gamma}"
    )
    alpha: float = 0.1
    beta: float = 0.9
    decay_point: DecayPoint = "decayed"

    def __post_init__(self) -> None:
        check_finite_nonnegative("alpha", self.alpha)
        check_positive("beta", self.beta)
        check_choice("decay_point", self.decay_point, DECAY_POINTS)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = stats_dtype(p)
        psi = p.detach().to(dtype=dtype, copy=True, memory_format=torch.preserve_format)
        return {"psi": psi.mul_(1.0 - self.alpha * self.beta)}

    def cost(self, shape: tuple[int, ...]) -> float:
        return 8.0 * math.prod(shape)

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        psi = s["psi"]
        lr = float(c.lr)
        if not lr < self.beta:
            raise ValueError(
                f"INNAprop needs lr < beta (its step divides by beta - lr): lr {lr}, "
                f"beta {self.beta}"
            )
        theta = c.param.to(psi.dtype)
        if self.decay_point == "decayed" and c.weight_decay != 0:
            theta = theta * (1.0 - lr * c.weight_decay)
        psi.mul_(1.0 - lr / self.beta).add_(theta, alpha=lr * (1.0 / self.beta - self.alpha))
        correction = torch.add(psi, theta, alpha=-(1.0 - self.alpha * self.beta))
        correction.div_(self.beta - lr)
        if u.dtype == psi.dtype:
            return u.mul_(self.beta).add_(correction)
        return u.copy_(correction.add_(u.to(psi.dtype), alpha=self.beta))
