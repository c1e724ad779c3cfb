"""Momentum on the incoming update."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_bool, check_choice
from orthoptim._types import State
from orthoptim.functional import multi_tensor
from orthoptim.functional.moments import ema_, stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase

MomentumKind = Literal["ema", "sum"]
MOMENTUM_KINDS: tuple[str, ...] = get_args(MomentumKind)
MomentumDtype = Literal["parameter", "float32"]
MOMENTUM_DTYPES: tuple[str, ...] = get_args(MomentumDtype)


@dataclass(frozen=True, slots=True, kw_only=True)
class Momentum(TransformBase):
    r"""Heavy-ball or Nesterov momentum.

    ``kind="ema"``: ``m <- beta m + (1 - beta) u`` (KellerJordan/Muon, torch.optim.Muon code).
    ``kind="sum"``: ``m <- beta m + u`` (torch.optim.SGD with dampening 0).
    The output is ``m``, or with ``nesterov`` the look-ahead ``u + beta (m - u)`` for ``"ema"``
    and ``u + beta m`` for ``"sum"``. With zero initial state the ``"ema"`` output is exactly
    ``(1 - beta)`` times the ``"sum"`` output, with or without Nesterov.

    State: ``m``, shaped like the parameter, in its dtype (``dtype="parameter"``) or, for
    16-bit parameters, in float32 (``dtype="float32"``: the update is computed in float32 and
    rounded to the parameter's dtype once, at the end).

    Args:
        beta: momentum coefficient in [0, 1).
        kind: ``"ema"`` or ``"sum"``.
        nesterov: use the Nesterov look-ahead instead of ``m``.
        dtype: ``"parameter"`` (the default) or ``"float32"`` (float32 for bfloat16 and float16
            parameters, the parameter's dtype otherwise). The references keep the buffer in the
            parameter's dtype: torch.optim.Muon (torch==2.13.0, ``torch.zeros_like(p.grad)``),
            KellerJordan/Muon@1430c34 ``muon.py`` (``torch.zeros_like(p)``) and torch.optim.SGD
            (a clone of the gradient); modded-nanogpt@f411b3d upcasts its Nesterov blend to
            float32 (``recipes.muon_polar``).
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
    dtype: MomentumDtype = "parameter"

    def __post_init__(self) -> None:
        check_beta("momentum beta", self.beta)
        check_choice("momentum kind", self.kind, MOMENTUM_KINDS)
        check_bool("nesterov", self.nesterov)
        check_choice("momentum_dtype", self.dtype, MOMENTUM_DTYPES)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = p.dtype if self.dtype == "parameter" else stats_dtype(p)
        return {"m": torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)}

    def __repr__(self) -> str:
        # ``dtype`` only where it is not the default: a checkpoint is checked against its
        # chain's repr, and those written before the option existed must still load.
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "dtype" or self.dtype != "parameter"
        ]
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def moments(self) -> tuple[float, ...]:
        return (self.beta,)

    def with_moments(self, moments: tuple[float, ...]) -> Momentum:
        return dataclasses.replace(self, beta=float(moments[0]))

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        m = s["m"]
        g = u if u.dtype == m.dtype else u.to(m.dtype)
        if self.kind == "ema":
            ema_(m, g, self.beta)
            out = g.lerp_(m, self.beta) if self.nesterov else m
        else:
            m.mul_(self.beta).add_(g)
            out = g.add_(m, alpha=self.beta) if self.nesterov else m
        return out if out is u else u.copy_(out)

    def apply_foreach(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        ms = [s["m"] for s in ss]
        gs = [u if u.dtype == m.dtype else u.to(m.dtype) for u, m in zip(us, ms, strict=True)]
        if self.kind == "ema":
            torch._foreach_lerp_(ms, gs, 1.0 - self.beta)  # ema_
            if self.nesterov:
                torch._foreach_lerp_(gs, ms, self.beta)
        else:
            multi_tensor.mul_(ms, self.beta)
            torch._foreach_add_(ms, gs)
            if self.nesterov:
                torch._foreach_add_(gs, ms, alpha=self.beta)
        out = gs if self.nesterov else ms
        pending = [i for i, (o, u) in enumerate(zip(out, us, strict=True)) if o is not u]
        if pending:
            torch._foreach_copy_([us[i] for i in pending], [out[i] for i in pending])
        return us
