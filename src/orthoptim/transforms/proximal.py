"""Proximal outlier suppression: keep the soft-threshold residual of the update (ROOT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from orthoptim._checks import check_positive
from orthoptim._types import State
from orthoptim.functional.robust import abs_quantile
from orthoptim.transforms.base import Ctx, TransformBase


def _check_quantile(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"clip_quantile must be a number in (0, 1], got {value!r}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"clip_quantile must be in (0, 1], got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClipOutliers(TransformBase):
    r"""``u <- u - T_tau(u) = clamp(u, -tau, tau)`` with ``tau = Q_q(|u|) + eps``.

    ROOT's proximal step: the soft-threshold ``O = T_tau(u) = sign(u) max(|u| - tau, 0)`` is the
    sparse "outlier" part of the update, and only the base ``B = u - O`` goes on. ``B`` is
    exactly the elementwise clip of ``u`` at ``tau``, which is how it is computed here (the
    reference forms ``u - O``, equal up to one rounding). The threshold is re-estimated every
    step as the ``quantile`` of ``|u|`` (huawei-noah/noah-research ROOT: 0.9, plus 1e-9), in
    float32 for 16-bit updates. ``quantile=1.0`` keeps every entry (``tau > max |u|``) and skips
    the quantile.

    Args:
        quantile: the fraction of entries left unclipped, in (0, 1].
        eps: added to the quantile (the reference's 1e-9), > 0.
    """

    key: ClassVar[str] = "clip_outliers"
    formula: ClassVar[str] = (
        r"\tau \leftarrow Q_q(|u|) + \epsilon;\;"
        r"u \leftarrow u - T_\tau(u) = \mathrm{clip}(u, \pm\tau)"
    )
    quantile: float = 0.9
    eps: float = 1e-9

    def __post_init__(self) -> None:
        _check_quantile(self.quantile)
        check_positive("clip eps", self.eps)

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        if self.quantile == 1.0:
            return u
        tau = (abs_quantile(u, self.quantile) + self.eps).to(u.dtype)
        return u.clamp_(min=-tau, max=tau)
