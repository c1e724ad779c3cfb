"""The loss landscape's induced metric applied to any chain's update (Harvey 2025)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, cast, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_finite_nonnegative
from orthoptim._types import State
from orthoptim.functional.induced_metric import (
    accumulation_dtype,
    scale_,
    sherman_morrison_,
    smoothed_trace,
    total_dot,
)
from orthoptim.functional.moments import bias_correction, stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase
from orthoptim.transforms.estimator import EstimatorGroup, GradientEstimator, LossOracle

MetricScope = Literal["model", "parameter"]
METRIC_SCOPES: tuple[str, ...] = get_args(MetricScope)
MetricInverse = Literal["scale", "sherman_morrison"]
METRIC_INVERSES: tuple[str, ...] = get_args(MetricInverse)


def same_step(cs: Sequence[Ctx]) -> int:
    """The step count the parameters of one model-wide metric share (one trace, one EMA):
    ``ValueError`` naming their counts where they differ (a parameter without a gradient at
    some step skipped it)."""
    steps = [c.int_step for c in cs]
    if len(set(steps)) > 1:
        counts = {c.name or f"#{i}": t for i, (c, t) in enumerate(zip(cs, steps, strict=True))}
        raise ValueError(
            "induced_metric scope='model' needs a gradient for every parameter of the route at "
            f"every step (one metric over all of them); their step counts differ: {counts}. "
            "Give every parameter a gradient (zero for an unused one), or use scope='parameter'"
        )
    return steps[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class InducedMetric(TransformBase):
    r"""``u <- G^{-1} u`` with the induced metric ``G = I + xi g g^T`` of the loss's graph.

    Harvey 2025 (arXiv 2509.03594): the Euclidean metric of ``R^{n+1}`` pulled back onto the
    graph of the loss is ``G = I + xi g g^T`` (``g`` the raw gradient, ``Ctx.grad``), rank one
    plus the identity, inverted in closed form (``functional.induced_metric``). The trace
    ``tau = xi ||g||^2`` is smoothed over steps as the reference does: ``a <- beta a + (1 -
    beta) tau``, ``tau_hat = |a| / (1 - beta^t)`` (``beta = 0``: the metric of this step).

    How the inverse acts (``inverse``):

    - ``"scale"`` (the reference): ``u <- u / (1 + tau_hat)``, whatever ``u`` is: ``G^{-1}`` of
      a step along the gradient, and the reference's rescaling of its momentum and of its
      RMS-preconditioned momentum (the induced metric modifying another preconditioner);
    - ``"sherman_morrison"``: ``u <- u - tau_hat / (1 + tau_hat) (g_hat . u) g_hat``, the
      inverse of the rank-one metric at this step's gradient applied to ``u`` itself: only
      ``u``'s component along the gradient shrinks (O(n): two inner products more).

    The two agree where ``u`` is parallel to ``g`` (no momentum, no preconditioner).

    Over what the norms and inner products run (``scope``): ``"model"`` (the reference: one
    gradient norm over every parameter it updates) sums them over every parameter of the
    route, across its param groups (``route_wide``: one process, and a gradient for every
    parameter at every step, ``ValueError`` otherwise); ``"parameter"``, each tensor (each
    matrix of the matrix core) its own metric, which runs under a distributed step.

    State: ``trace``, a 0-d EMA of ``tau`` per parameter (float32, float64 for float64
    parameters): 4 or 8 bytes per tensor. With ``scope="model"`` every parameter keeps the same
    value (the route's), so any one of them resumes it.

    Args:
        xi: the embedding's scale ``xi >= 0`` (the loss's axis stretched by ``sqrt(xi)``);
            ``0`` leaves ``u`` unchanged.
        beta: EMA decay of the trace, in [0, 1).
        scope: ``"model"`` or ``"parameter"`` (above).
        inverse: ``"scale"`` or ``"sherman_morrison"`` (above).
    """

    key: ClassVar[str] = "induced_metric"
    formula: ClassVar[str] = (
        r"a \leftarrow \beta a + (1-\beta)\,\xi\|g\|^2;\;\hat\tau = |a|/(1-\beta^t);\;"
        r"u \leftarrow u / (1 + \hat\tau)\ \text{or}\ "
        r"u - \tfrac{\hat\tau}{1+\hat\tau} (\hat g \cdot u)\,\hat g"
    )
    xi: float = 0.1
    beta: float = 0.8
    scope: MetricScope = "model"
    inverse: MetricInverse = "scale"

    def __post_init__(self) -> None:
        check_finite_nonnegative("xi", self.xi)
        check_beta("metric_beta", self.beta)
        check_choice("scope", self.scope, METRIC_SCOPES)
        check_choice("inverse", self.inverse, METRIC_INVERSES)

    @property
    def route_wide(self) -> bool:
        return self.scope == "model"

    def init(self, p: Tensor) -> dict[str, Tensor]:
        return {"trace": torch.zeros((), dtype=stats_dtype(p), device=p.device)}

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self.apply_many([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        if not us:
            return us
        if self.scope == "parameter":
            return [
                self._metric([u], [s], [c], c.int_step)[0]
                for u, s, c in zip(us, ss, cs, strict=True)
            ]
        return self._metric(us, ss, cs, same_step(cs))

    def _metric(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx], step: int
    ) -> list[Tensor]:
        """One metric over the pieces ``us`` (their gradients ``cs[i].grad``)."""
        gs = [c.grad for c in cs]
        device = ss[0]["trace"].device
        norm2 = total_dot(gs, gs, device)
        first = ss[0]["trace"]
        average = first.to(accumulation_dtype([s["trace"] for s in ss]))
        average, tau = smoothed_trace(average, self.xi * norm2, self.beta, step)
        for s in ss:
            s["trace"].copy_(average)
        if self.inverse == "scale":
            return scale_(us, tau)
        return sherman_morrison_(us, gs, tau)

    def cost(self, shape: tuple[int, ...]) -> float:
        # ||g||^2 and the scaling: 3 FLOPs per element; Sherman-Morrison adds g . u and the
        # axpy: 4 more.
        return (3.0 if self.inverse == "scale" else 7.0) * math.prod(shape)


@dataclass(frozen=True, slots=True, kw_only=True)
class DebiasMomentum(TransformBase):
    r"""``u <- u / (1 - beta^t)``: the bias correction of an EMA momentum started at zero.

    After ``Momentum(kind="ema")`` it gives the bias-corrected momentum ``m_hat`` of the
    induced-metric reference's SGD (``custom_sgd``) and of Adam's first moment. ``beta`` is the
    momentum's; a scheduler that moves the momentum's coefficient does not move it.

    Args:
        beta: the momentum's EMA decay, in [0, 1).
    """

    key: ClassVar[str] = "debias"
    formula: ClassVar[str] = r"u \leftarrow u / (1 - \beta^t)"
    elementwise: ClassVar[bool] = True
    beta: float = 0.9

    def __post_init__(self) -> None:
        check_beta("momentum", self.beta)

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return u.div_(bias_correction(self.beta, c.int_step))


LOG_LOSS_FLOOR = 1e-12
"""The loss below which ``LogLossGradient`` divides by this instead: ``log L`` needs ``L > 0``,
and near zero ``g / L`` would overflow where the metric then makes the step vanish anyway."""


@dataclass(frozen=True)
class LogLossGradient(GradientEstimator):
    r"""``g <- g / L``: the gradient of ``log L``, so the routes' induced metric is that of the
    graph of ``log L`` (Harvey 2025, arXiv 2509.03594; the reference's ``custom_sgd_log``).

    Under ``InducedMetric`` the step along the gradient becomes ``(g / L) / (1 + xi ||g||^2 /
    L^2) = L g / (L^2 + xi ||g||^2)``: the reference's loss-scaled step. It reads the closure's
    loss (``step(closure)``, one forward and one backward pass as usual); ``L`` below
    ``LOG_LOSS_FLOOR`` (log needs a positive loss) is taken as the floor.
    """

    key: ClassVar[str] = "log_loss"

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        loss = oracle.loss
        if loss is None:
            raise ValueError(
                "graph='log_loss' divides the gradient by the loss: the closure passed to "
                "step(closure) must return the loss"
            )
        inverse = torch.reciprocal(loss.detach().clamp_min(LOG_LOSS_FLOOR))
        return [
            [
                cast(Tensor, g) * inverse.to(cast(Tensor, g).device, cast(Tensor, g).dtype)
                for g in group.grads
            ]
            for group in groups
        ]

    @property
    def passes(self) -> str:
        return "1 forward, 1 backward (the closure's loss divides the gradient)"
