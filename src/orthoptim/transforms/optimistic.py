"""Optimistic AMSGrad: AMSGrad's step plus an optimistic step along a predicted next gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_betas, check_choice, check_positive, check_positive_int
from orthoptim._types import State
from orthoptim.functional.first_order import rmpe
from orthoptim.functional.moments import bias_correction, ema_, ema_square_, stats_dtype
from orthoptim.transforms.base import BetasMoments, Ctx, TransformBase

Prediction = Literal["extrapolation", "last_gradient", "none"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
LookaheadMomentum = Literal["previous", "current"]
LOOKAHEAD_MOMENTA: tuple[str, ...] = get_args(LookaheadMomentum)
AmsgradConvention = Literal["paper", "torch"]
AMSGRAD_CONVENTIONS: tuple[str, ...] = get_args(AmsgradConvention)
SecondMoment = Literal["gradient", "prediction_error"]
SECOND_MOMENTS: tuple[str, ...] = get_args(SecondMoment)


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimisticAMSGrad(BetasMoments, TransformBase):
    r"""Optimistic AMSGrad (Wang, Li, Karimi, Li, arXiv 1903.01435, Algorithm 2).

    The paper keeps two sequences, ``w_{t+1/2} = w_{t-1/2} - lr theta_t / sqrt(vhat_t)`` and
    ``w_{t+1} = w_{t+1/2} - lr h_{t+1} / sqrt(vhat_t)`` with ``h_{t+1} = b1 theta_{t-1} +
    (1 - b1) m_{t+1}`` and ``m_{t+1}`` a guess of the next gradient. As an update of the
    parameter ``w_t`` that is ``u = theta_t / sqrt(vhat_t) + o_{t+1} - o_t`` with
    ``o_{t+1} = h_{t+1} / sqrt(vhat_t)`` the optimistic step, of which the state keeps the last
    (``o_1 = 0``: ``w_1 = w_{-1/2}``). ``theta``, ``v`` and ``vhat = max(vhat, v)`` are
    AMSGrad's moments.

    Options:

    * ``prediction``: the guess ``m_{t+1}``. ``"extrapolation"`` (the paper's Algorithm 3):
      regularized minimal polynomial extrapolation
      (``functional.first_order.rmpe``) of the last ``window + 1`` gradients of the tensor
      (fewer on the first steps: the ones seen so far; the current gradient alone on the
      first); ``"last_gradient"``: ``m_{t+1} = g_t``; ``"none"``: no optimistic step
      (``o = 0``: plain AMSGrad, without the optimistic state).
    * ``lookahead_momentum``: ``"previous"`` uses ``theta_{t-1}`` in ``h_{t+1}`` as Algorithm 2
      prints it; ``"current"`` uses ``theta_t`` (``h_{t+1}`` is then the momentum the guess
      would give next step).
    * ``convention``: ``"paper"``: no bias correction, ``v_0 = vhat_0 = eps`` and
      ``sqrt(vhat)`` as the denominator (Algorithm 2's initialisation); ``"torch"``: moments
      from 0, ``theta / (1 - b1^t)`` and ``h / (1 - b1^t)`` over ``sqrt(vhat / (1 - b2^t)) +
      eps`` (torch.optim.Adam(amsgrad=True), which ``prediction="none"`` then equals).
    * ``second_moment``: what ``v`` averages: ``"gradient"``, ``g_t^2`` (AMSGrad's, as we
      transcribe Algorithm 2); ``"prediction_error"``, ``(g_t - m_t)^2`` with ``m_t`` the guess
      the previous step made for this step's gradient (0 on the first step), as the authors'
      experiment code does (Hintonthu/optimistic-amsgrad@07fd55e ``Optadam_torch.py``); needs a
      prediction.

    Not element-wise: the extrapolation couples a tensor's entries (the paper extrapolates the
    whole model's gradient; we extrapolate each tensor's, a smaller ``window x window`` system
    per tensor), so a distributed step runs it on whole tensors.

    State: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, with a prediction also
    ``optimistic`` (``o_t``), with ``"extrapolation"`` also ``history`` (the last
    ``window + 1`` gradients, a ring indexed by the step), with ``"prediction_error"`` also
    ``guess`` (``m_{t+1}``), all in ``stats_dtype``.

    Args:
        betas: ``(b1, b2)``, each in [0, 1).
        eps: ``v_0`` (``"paper"``) or the denominator's addend (``"torch"``), > 0.
        prediction: ``"extrapolation"``, ``"last_gradient"`` or ``"none"``.
        window: ``r``, the extrapolation's number of differences, >= 1.
        extrapolation_reg: the extrapolation's ridge, relative to ``max diag(U^T U)``, > 0.
        lookahead_momentum: ``"previous"`` or ``"current"``.
        convention: ``"paper"`` or ``"torch"``.
        second_moment: ``"gradient"`` or ``"prediction_error"``.
    """

    key: ClassVar[str] = "optimistic_amsgrad"
    formula: ClassVar[str] = (
        r"\theta \leftarrow \beta_1\theta + (1-\beta_1)g;\; \hat v \leftarrow \max(\hat v,"
        r" v);\; o' = \frac{\beta_1\theta_{t-1} + (1-\beta_1)m_{t+1}}{\sqrt{\hat v}};\;"
        r"u \leftarrow \frac{\theta}{\sqrt{\hat v}} + o' - o"
    )
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    prediction: Prediction = "extrapolation"
    window: int = 5
    extrapolation_reg: float = 1e-3
    lookahead_momentum: LookaheadMomentum = "previous"
    convention: AmsgradConvention = "paper"
    second_moment: SecondMoment = "gradient"

    def __post_init__(self) -> None:
        check_betas("betas", self.betas)
        check_positive("eps", self.eps)
        check_choice("prediction", self.prediction, PREDICTIONS)
        check_positive_int("window", self.window)
        check_positive("extrapolation_reg", self.extrapolation_reg)
        check_choice("lookahead_momentum", self.lookahead_momentum, LOOKAHEAD_MOMENTA)
        check_choice("convention", self.convention, AMSGRAD_CONVENTIONS)
        check_choice("second_moment", self.second_moment, SECOND_MOMENTS)
        if self.second_moment == "prediction_error" and self.prediction == "none":
            raise ValueError(
                "second_moment='prediction_error' averages (g - m)^2 of a prediction m: "
                "it needs prediction 'extrapolation' or 'last_gradient', got prediction='none'"
            )

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = stats_dtype(p)
        v0 = self.eps if self.convention == "paper" else 0.0

        def like(fill: float) -> Tensor:
            return torch.full_like(p, fill, dtype=dtype, memory_format=torch.preserve_format)

        state = {"exp_avg": like(0.0), "exp_avg_sq": like(v0), "max_exp_avg_sq": like(v0)}
        if self.prediction != "none":
            state["optimistic"] = like(0.0)
        if self.prediction == "extrapolation":
            state["history"] = p.new_zeros((self.window + 1, *p.shape), dtype=dtype)
        if self.second_moment == "prediction_error":
            state["guess"] = like(0.0)
        return state

    def cost(self, shape: tuple[int, ...]) -> float:
        n = math.prod(shape)
        if self.prediction == "extrapolation":  # the Gram matrix of the differences dominates
            return (12.0 + 2.0 * (self.window + 1) * (self.window + 2)) * n
        return 12.0 * n

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        exp_avg, exp_avg_sq, vhat = s["exp_avg"], s["exp_avg_sq"], s["max_exp_avg_sq"]
        b1, b2 = self.betas
        step = c.int_step
        g = u.to(exp_avg.dtype)
        momentum_part = None
        if self.prediction != "none" and self.lookahead_momentum == "previous":
            momentum_part = exp_avg.mul(b1)  # b1 theta_{t-1}, before theta moves
        ema_(exp_avg, g, b1)
        if self.second_moment == "prediction_error":
            ema_square_(exp_avg_sq, torch.sub(g, s["guess"]), b2)
        else:
            ema_square_(exp_avg_sq, g, b2)
        torch.maximum(vhat, exp_avg_sq, out=vhat)
        if self.convention == "paper":
            denom, scale = vhat.sqrt(), 1.0
        else:
            denom = vhat.sqrt().div_(math.sqrt(bias_correction(b2, step))).add_(self.eps)
            scale = 1.0 / bias_correction(b1, step)
        direction = torch.div(exp_avg, denom).mul_(scale)
        if self.prediction != "none":
            guess = self._guess(g, s.get("history"), step)
            if "guess" in s:
                s["guess"].copy_(guess)
            if momentum_part is None:
                momentum_part = exp_avg.mul(b1)
            optimistic = momentum_part.add_(guess, alpha=1.0 - b1).div_(denom).mul_(scale)
            direction.add_(optimistic).sub_(s["optimistic"])
            s["optimistic"].copy_(optimistic)
        return u.copy_(direction)

    def _guess(self, g: Tensor, history: Tensor | None, step: int) -> Tensor:
        """``m_{t+1}``: ``g`` itself, or the extrapolation of the gradients seen so far (the
        ring's slot ``(t - 1) mod (window + 1)`` takes ``g``; Python-int indexing only)."""
        if history is None:
            return g
        size = history.shape[0]
        history[(step - 1) % size].copy_(g)
        if step == 1:
            return g
        if step < size:
            ordered = history[:step]
        else:
            start = step % size  # the oldest slot
            ordered = torch.cat([history[start:], history[:start]])
        flat = ordered.reshape(ordered.shape[0], -1)
        return rmpe(flat, self.extrapolation_reg).reshape(g.shape)
