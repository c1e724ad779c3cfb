"""Proximal outlier suppression: keep the soft-threshold residual of the update (ROOT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from torch import Tensor

from orthoptim._checks import check_choice, check_positive, check_positive_int
from orthoptim._types import State
from orthoptim.functional.robust import abs_quantile, sampled_abs_quantile
from orthoptim.transforms.base import Ctx, TransformBase

ClipEstimate = Literal["exact", "sampled"]
CLIP_ESTIMATES: tuple[str, ...] = get_args(ClipEstimate)


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
        estimate: how ``Q_q`` is taken. ``"exact"`` (the reference): over every entry.
            ``"sampled"``: from ``samples`` entries drawn uniformly with replacement, a fresh
            shift of one fixed draw per step, chosen from the step counter
            (``functional.robust.sampled_abs_quantile``; exact for matrices of at most
            ``samples`` entries). By the DKW inequality the estimate lies between the exact
            ``q - eps`` and ``q + eps`` quantiles with probability ``>= 1 - delta``,
            ``eps = sqrt(ln(2/delta) / (2 samples))``: 0.0105 at the default 2^16 samples and
            ``delta = 1e-6``, so about 9% to 11% of the entries are clipped instead of 10%.
        samples: the sample size of ``estimate="sampled"``, a positive int.
    """

    key: ClassVar[str] = "clip_outliers"
    formula: ClassVar[str] = (
        r"\tau \leftarrow Q_q(|u|) + \epsilon;\;"
        r"u \leftarrow u - T_\tau(u) = \mathrm{clip}(u, \pm\tau)"
    )
    quantile: float = 0.9
    eps: float = 1e-9
    estimate: ClipEstimate = "exact"
    samples: int = 2**16

    def __post_init__(self) -> None:
        _check_quantile(self.quantile)
        check_positive("clip eps", self.eps)
        check_choice("clip_estimate", self.estimate, CLIP_ESTIMATES)
        check_positive_int("clip samples", self.samples)

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        if self.quantile == 1.0:
            return u
        if self.estimate == "sampled":
            if not isinstance(c.step, int):  # only capturable transforms see a tensor counter
                raise TypeError(f"ClipOutliers needs the host step counter, got {c.step!r}")
            q = sampled_abs_quantile(u, self.quantile, self.samples, c.step)
        else:
            q = abs_quantile(u, self.quantile)
        tau = (q + self.eps).to(u.dtype)
        return u.clamp_(min=-tau, max=tau)
