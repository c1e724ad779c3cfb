"""Sharpness-aware gradient estimators: SAM and ASAM (``SharpnessAware``), GAM
(``GradientNormAware``) and finite-difference gradient regularisation
(``FiniteDifferenceGR``). Each evaluates the step's closure at points near the current
parameters (``LossOracle.gradients_at``) and hands the plan's routes one gradient; the maths is
``functional.sharpness``. None keeps a buffer: the state is the base optimizer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from torch import Tensor

from orthoptim._checks import check_bool, check_choice, check_finite_nonnegative, check_positive
from orthoptim.functional.sharpness import (
    fd_gradreg_gradient,
    gam_direction,
    perturbed,
    shifted,
)
from orthoptim.transforms.estimator import (
    EstimatorGroup,
    GradientEstimator,
    LossOracle,
    regroup,
)

GamLossGradient = Literal["sam", "plain"]
GAM_LOSS_GRADIENTS: tuple[str, ...] = get_args(GamLossGradient)
FiniteDifference = Literal["ascent", "descent"]
FINITE_DIFFERENCES: tuple[str, ...] = get_args(FiniteDifference)


def _flat(groups: Sequence[EstimatorGroup]) -> tuple[list[Tensor], list[Tensor]]:
    """Every parameter the estimator sees and its gradient at the current point (the shell
    passes only parameters the closure gave one)."""
    params = [p for g in groups for p in g.params]
    grads = [g for group in groups for g in group.grads]
    missing = [i for i, g in enumerate(grads) if g is None]
    if missing:  # the shell's contract (closure_backward): a parameter here has a gradient
        raise ValueError(f"parameters {missing} reached the estimator without a gradient")
    return params, [g.detach() for g in grads if g is not None]


def _at(oracle: LossOracle, params: Sequence[Tensor], points: Sequence[Tensor]) -> list[Tensor]:
    """The gradients of every parameter with the parameters moved to ``points``."""
    _, found = oracle.gradients_at(dict(zip(params, points, strict=True)), params)
    return found


@dataclass(frozen=True, kw_only=True)
class SharpnessAware(GradientEstimator):
    """SAM's gradient: the gradient at ``w + e``, ``e = rho g / (||g|| + eps)`` (Foret et al.
    2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization", arXiv
    2010.01412, with ``p = 2``), ``||.||`` over every parameter of the optimizer.
    ``adaptive=True``: ASAM's ``e = rho T^2 g / (||T g|| + eps)``, ``T = |w|`` element-wise
    (Kwon et al. 2021, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
    Learning of Deep Neural Networks", arXiv 2102.11600, with their ``eta = 0``), as davda54/sam's
    ``adaptive``.

    Args:
        rho: the neighbourhood's radius (the papers: 0.05 for SAM, about 10x that for ASAM).
        adaptive: ASAM's scale-invariant neighbourhood.
        eps: added to the norm (davda54/sam's 1e-12), so a zero gradient gives ``e = 0``.
    """

    rho: float = 0.05
    adaptive: bool = False
    eps: float = 1e-12

    def __post_init__(self) -> None:
        check_finite_nonnegative("rho", self.rho)
        check_bool("adaptive", self.adaptive)
        check_positive("eps", self.eps)

    @property
    def passes(self) -> str:
        return "2 forward, 2 backward"

    def explain(self) -> str:
        kind = "ASAM, e = rho |w|^2 g / ||w g||" if self.adaptive else "e = rho g / ||g||"
        return f"SharpnessAware: the gradient at w + e ({kind}, rho={self.rho:g}); {self.passes}"

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        params, grads = _flat(groups)
        if not params:
            return regroup(groups, [])
        points = perturbed(params, grads, self.rho, self.adaptive, self.eps)
        return regroup(groups, _at(oracle, params, points))


@dataclass(frozen=True, kw_only=True)
class GradientNormAware(GradientEstimator):
    """Accelerated GAM (Zhang, Xu, Yu, Zou, Cui 2023, "Gradient Norm Aware Minimization Seeks
    First-Order Flatness and Improves Generalization", CVPR, arXiv 2303.03108, Algorithm 2;
    xxgege/GAM@694133d ``gam/gam.py``): four gradients,

        g0 = grad L(w)                 g1 = grad L(w + rho' g0 / ||g0||)
        w2 = w + rho h / ||h||, h = g1 - g0   (ascent of the gradient norm: h ~ rho' H g0/||g0||)
        g2 = grad L(w2)                g3 = grad L(w2 + rho' g2 / ||g2||)

    then ``h+ = alpha g1 + (1 - alpha) g3``, ``h- = beta g0 + (1 - beta) g2`` and the gradient
    ``h+ - gamma (h-)_perp``, ``(h-)_perp`` the part of ``h-`` orthogonal to ``h+`` (GSAM's
    decomposition). ``g3 - g2 ~ rho' grad ||grad L||`` at ``w2``, the first-order flatness GAM
    penalises; ``g1`` is SAM's gradient at radius ``rho'``: with ``loss_gradient="sam"`` (the
    paper's Algorithm 2 and the authors' code) ``h+`` combines GAM with SAM.

    Args:
        rho: ``rho'``, the SAM-style radius of ``g1`` and ``g3`` (the code's ``grad_rho``,
            0.02).
        norm_rho: ``rho``, the radius of the gradient-norm ascent (``grad_norm_rho``, 0.2).
        plus_weight: the paper's ``alpha``, the weight of ``g1`` (at ``w``) against ``g3`` (at
            ``w2``) in ``h+``.
        minus_weight: the paper's ``beta``, the weight of ``g0`` against ``g2`` in ``h-``.
        gamma: the orthogonal part's coefficient (``grad_gamma``, 0.03).
        loss_gradient: ``"sam"`` (paper, code): ``h+`` weighs SAM's ``g1``. ``"plain"`` (ours,
            not in the paper): ``g0`` in its place, so that with ``alpha = beta`` the surrogate
            gap ``h+ - h-`` is ``(1 - alpha)(g3 - g2)``, GAM's first-order flatness alone
            without SAM's zeroth-order term; still four evaluations (``g1`` sets ``w2``).
        adaptive: ASAM's ``|w|``-scaled steps for all three ascents, as the code's
            ``adaptive`` (each scaled at the point it starts from).
        eps: the code's ``perturb_eps`` (1e-12), in every norm's denominator.

    Differences from the reference (xxgege/GAM@694133d): the code weighs ``h+ = beta_1 g1 +
    beta_3 g3`` and ``h- = g0 + |beta_2| g2`` (its ``grad_beta_0`` is unused) where the paper
    has convex weights: the code's direction is ``(beta_1 + beta_3)`` times the paper's with
    ``alpha = beta_1 / (beta_1 + beta_3)``, ``beta = 1 / (1 + |beta_2|)`` and ``gamma =
    grad_gamma (1 + |beta_2|) / (beta_1 + beta_3)``. Its defaults (1, -1, 1) are twice the
    paper's direction at ``alpha = beta = 0.5`` (``plus_weight``, ``minus_weight``), ``gamma =
    grad_gamma``: the registered lr is
    twice the code's 0.1 (tests/reference pin this mapping). No ``rho`` schedulers (the code's
    ``ProportionScheduler`` ties the radii to the lr schedule); no BatchNorm running-statistics
    switching (the closure owns the model).
    """

    rho: float = 0.02
    norm_rho: float = 0.2
    plus_weight: float = 0.5
    minus_weight: float = 0.5
    gamma: float = 0.03
    loss_gradient: GamLossGradient = "sam"
    adaptive: bool = False
    eps: float = 1e-12

    def __post_init__(self) -> None:
        check_finite_nonnegative("rho", self.rho)
        check_finite_nonnegative("norm_rho", self.norm_rho)
        for name in ("plus_weight", "minus_weight"):
            value = getattr(self, name)
            check_finite_nonnegative(name, value)
            if value > 1:
                raise ValueError(f"{name} must be in [0, 1] (a convex weight), got {value!r}")
        check_finite_nonnegative("gamma", self.gamma)
        check_choice("loss_gradient", self.loss_gradient, GAM_LOSS_GRADIENTS)
        check_bool("adaptive", self.adaptive)
        check_positive("eps", self.eps)

    @property
    def passes(self) -> str:
        return "4 forward, 4 backward"

    def explain(self) -> str:
        return (
            f"GradientNormAware: h+ - gamma (h-)_perp from 4 gradients (rho'={self.rho:g}, "
            f"rho={self.norm_rho:g}, alpha={self.plus_weight:g}, beta={self.minus_weight:g}, "
            f"gamma={self.gamma:g}, loss gradient {self.loss_gradient}); {self.passes}"
        )

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        params, g0 = _flat(groups)
        if not params:
            return regroup(groups, [])
        w = [p.detach() for p in params]
        g1 = _at(oracle, params, perturbed(w, g0, self.rho, self.adaptive, self.eps))
        h = [a - b for a, b in zip(g1, g0, strict=True)]
        w2 = perturbed(w, h, self.norm_rho, self.adaptive, self.eps)
        g2 = _at(oracle, params, w2)
        g3 = _at(oracle, params, perturbed(w2, g2, self.rho, self.adaptive, self.eps))
        loss = g1 if self.loss_gradient == "sam" else g0
        # g2 and g3 are the oracle's fresh copies: h+, h- and the result are built in them.
        out = gam_direction(
            g0,
            loss,
            g2,
            g3,
            alpha=self.plus_weight,
            beta=self.minus_weight,
            gamma=self.gamma,
            eps=self.eps,
            overwrite=True,
        )
        return regroup(groups, out)


@dataclass(frozen=True, kw_only=True)
class FiniteDifferenceGR(GradientEstimator):
    """The gradient of ``L + (gamma / 2) ||grad L||^2`` by one finite difference (Karakida,
    Takase, Hayase, Osawa 2023, "Understanding Gradient Regularization in Deep Learning:
    Efficient Finite-Difference Computation and Implicit Bias", ICML, arXiv 2210.02720):
    ``g + gamma H g`` with ``H g ~ (grad L(w + s g) - g) / s``, i.e.

        (1 - gamma / s) g + (gamma / s) grad L(w + s g),

    ``s = eps`` for ``"ascent"`` (their forward difference F-GR, the one they recommend: a
    gradient ascent step, then the descent; with ``eps = gamma`` it is SAM without the
    normalisation) and ``s = -eps`` for ``"descent"`` (their backward difference B-GR). No
    double backward: two gradients per step.

    Args:
        gamma: the regulariser's coefficient.
        eps: the finite-difference step (a length per unit of gradient, not normalised).
        direction: ``"ascent"`` (F-GR) or ``"descent"`` (B-GR).

    Differences from the reference: no public code; written from the paper's formula, the
    defaults (``gamma = 0.05``, ``eps = 0.1``: a large ascent step, which the paper finds
    generalises best) are ours.
    """

    gamma: float = 0.05
    eps: float = 0.1
    direction: FiniteDifference = "ascent"

    def __post_init__(self) -> None:
        check_finite_nonnegative("gamma", self.gamma)
        check_positive("eps", self.eps)
        check_choice("direction", self.direction, FINITE_DIFFERENCES)

    @property
    def passes(self) -> str:
        return "2 forward, 2 backward"

    @property
    def step_size(self) -> float:
        """The signed finite-difference step ``s``."""
        return self.eps if self.direction == "ascent" else -self.eps

    def explain(self) -> str:
        return (
            f"FiniteDifferenceGR: g + gamma (grad L(w + s g) - g) / s, gamma={self.gamma:g}, "
            f"s={self.step_size:g} ({self.direction}); {self.passes}"
        )

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        params, grads = _flat(groups)
        if not params:
            return regroup(groups, [])
        s = self.step_size
        found = _at(oracle, params, shifted(params, grads, s))
        return regroup(groups, fd_gradreg_gradient(grads, found, self.gamma, s))
