"""Sharpness-aware wrappers: ``sam`` (and ASAM), ``gam`` and ``fd_gradreg`` over any base
optimizer (a chain or a whole plan), through the plan-level gradient estimators of
``transforms.sharpness``. Each needs ``step(closure)``; the base steps on the estimated gradient.
"""

from __future__ import annotations

from typing import Literal, get_args

from orthoptim._checks import check_choice
from orthoptim.recipes.baselines import adamw, sgd
from orthoptim.recipes.options import default
from orthoptim.recipes.plan import Plan, estimated
from orthoptim.transforms import Chain
from orthoptim.transforms.sharpness import (
    FiniteDifference,
    FiniteDifferenceGR,
    GamLossGradient,
    GradientNormAware,
    SharpnessAware,
)

SharpnessBase = Literal["sgd", "adamw"]
SHARPNESS_BASES: tuple[str, ...] = get_args(SharpnessBase)
BASE_MOMENTUM = 0.9
"""Heavy-ball momentum of the ``"sgd"`` base: torch.optim.SGD(momentum=0.9), the base of SAM's,
ASAM's and GAM's experiments and reference code."""


def base_optimizer(base: SharpnessBase | Chain | Plan, momentum: float) -> Chain | Plan:
    """The wrapped optimizer: ``"sgd"`` (torch.optim.SGD with heavy-ball ``momentum``, L2
    decay), ``"adamw"`` (``recipes.adamw()``), or a chain or plan as given. ``momentum`` belongs
    to ``"sgd"``: another value with another base raises ``ValueError``."""
    if isinstance(base, (Chain, Plan)):
        chosen = "a chain or plan"
    else:
        check_choice("base", base, SHARPNESS_BASES)
        chosen = repr(base)
        if base == "sgd":
            return sgd(momentum=momentum, nesterov=False)
    if momentum != BASE_MOMENTUM:
        raise ValueError(
            f"momentum={momentum!r} configures base='sgd'; with {chosen} as the base set its "
            "momentum there"
        )
    return adamw() if base == "adamw" else base


def sam(
    base: SharpnessBase | Chain | Plan = "sgd",
    *,
    rho: float = default(SharpnessAware, "rho"),
    adaptive: bool = default(SharpnessAware, "adaptive"),
    momentum: float = BASE_MOMENTUM,
) -> Plan:
    """SAM (Foret, Kleiner, Mobahi, Neyshabur 2021, arXiv 2010.01412): ``base`` steps on the
    gradient at ``w + rho g / ||g||`` (``transforms.sharpness.SharpnessAware``; the norm over
    every parameter of the optimizer); ``adaptive=True`` is ASAM (Kwon et al. 2021, arXiv
    2102.11600). Two forward and two backward passes per step, through ``step(closure)``; no
    state beyond the base's.

    ``base``: ``"sgd"`` (the papers' SGD with heavy-ball ``momentum`` 0.9 and L2 weight decay),
    ``"adamw"``, or any chain or plan (``sam(with_adamw(muon(), name="muon"))``).

    Differences from the reference (davda54/sam@3c3afdb ``sam.py``; pytorch-optimizer==4.1.0
    ``SAM``): ``step(closure)`` evaluates the gradient at ``w`` itself (both references read the
    one the user's ``backward`` left, then call the closure at ``w + e``); parameters and their
    ``.grad`` are restored by the shell also when the closure raises; the base's weight decay
    and momentum read the restored ``w`` as in the references. ``.grad`` after the step holds
    the gradient at ``w + e`` (the one the base used), as after their ``second_step``.
    pytorch-optimizer computes the norm in float32 (ours: the parameters' dtype, float32 for
    16-bit ones). No ``use_gc`` (gradient centralisation). The ``adaptive`` radius is the
    user's: ASAM's paper and davda54's example use ``rho`` about 10x SAM's (0.5 - 2.0).

    References: arXiv 2010.01412, 2102.11600; davda54/sam@3c3afdbd71cff2462ec91c734b3d1170bd0f3707.
    """
    return estimated(base_optimizer(base, momentum), SharpnessAware(rho=rho, adaptive=adaptive))


def gam(
    base: SharpnessBase | Chain | Plan = "sgd",
    *,
    rho: float = default(GradientNormAware, "rho"),
    norm_rho: float = default(GradientNormAware, "norm_rho"),
    plus_weight: float = default(GradientNormAware, "plus_weight"),
    minus_weight: float = default(GradientNormAware, "minus_weight"),
    gamma: float = default(GradientNormAware, "gamma"),
    loss_gradient: GamLossGradient = default(GradientNormAware, "loss_gradient"),
    adaptive: bool = default(GradientNormAware, "adaptive"),
    momentum: float = BASE_MOMENTUM,
) -> Plan:
    """GAM, accelerated (Zhang, Xu, Yu, Zou, Cui 2023, CVPR, arXiv 2303.03108, Algorithm 2):
    ``base`` steps on ``h+ - gamma (h-)_perp`` from four gradients (``transforms.sharpness.
    GradientNormAware``: SAM's ``g1`` combined with GAM's first-order-flatness pair ``g2``,
    ``g3``; ``loss_gradient="plain"`` drops SAM's term). Four forward and four backward
    passes per step, through ``step(closure)``; no state beyond the base's.

    ``base``: ``"sgd"`` (the paper's and code's SGD, heavy-ball ``momentum`` 0.9), ``"adamw"``
    (the paper's other base), or any chain or plan.

    Differences from the reference (xxgege/GAM@694133d ``gam/gam.py``): the paper's convex
    weights ``alpha``, ``beta`` (``plus_weight``, ``minus_weight``) instead of the code's
    ``grad_beta_1..3`` (the code's defaults are twice this direction at ``alpha = beta = 0.5``,
    so the registry's lr 0.2 and weight decay 2.5e-4 are the code's 0.1 and 5e-4); constant
    radii (the code scales them with the lr schedule); the closure owns BatchNorm statistics
    (the code switches them off for the perturbed passes). ``GradientNormAware`` lists the mapping.

    References: arXiv 2303.03108; xxgege/GAM@694133d9df9266a3df892087ca6b1be72ba610c0.
    """
    estimator = GradientNormAware(
        rho=rho,
        norm_rho=norm_rho,
        plus_weight=plus_weight,
        minus_weight=minus_weight,
        gamma=gamma,
        loss_gradient=loss_gradient,
        adaptive=adaptive,
    )
    return estimated(base_optimizer(base, momentum), estimator)


def fd_gradreg(
    base: SharpnessBase | Chain | Plan = "sgd",
    *,
    gamma: float = default(FiniteDifferenceGR, "gamma"),
    eps: float = default(FiniteDifferenceGR, "eps"),
    direction: FiniteDifference = default(FiniteDifferenceGR, "direction"),
    momentum: float = BASE_MOMENTUM,
) -> Plan:
    """Finite-difference gradient regularisation (Karakida, Takase, Hayase, Osawa 2023, ICML,
    arXiv 2210.02720): ``base`` steps on ``(1 - gamma/s) g + (gamma/s) grad L(w + s g)``, the
    gradient of ``L + (gamma/2) ||grad L||^2`` with ``H g`` by a finite difference, ``s = eps``
    (``direction="ascent"``, their F-GR) or ``-eps`` (``"descent"``, B-GR)
    (``transforms.sharpness.FiniteDifferenceGR``). Two forward and two backward passes per step,
    no double backward, through ``step(closure)``; no state beyond the base's.

    ``base``: ``"sgd"`` (the paper's SGD; heavy-ball ``momentum`` 0.9), ``"adamw"``, or any
    chain or plan.

    Differences from the reference: no public code; the formula is the paper's, the defaults
    (``gamma``, ``eps``, momentum, the registry's lr and weight decay) are ours.

    References: arXiv 2210.02720 (oracle only).
    """
    estimator = FiniteDifferenceGR(gamma=gamma, eps=eps, direction=direction)
    return estimated(base_optimizer(base, momentum), estimator)
