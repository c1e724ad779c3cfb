"""The induced-metric optimiser: any chain's update under the loss landscape's induced metric."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args, overload

from orthoptim._checks import check_beta, check_choice
from orthoptim.recipes.baselines import adamw
from orthoptim.recipes.muon import MUON_ADAMW, muon
from orthoptim.recipes.options import default
from orthoptim.recipes.plan import Plan, estimated, with_adamw
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.induced_metric import (
    DebiasMomentum,
    InducedMetric,
    LogLossGradient,
    MetricInverse,
    MetricScope,
)
from orthoptim.transforms.momentum import Momentum
from orthoptim.transforms.scaling import AddWeightDecay

MetricBase = Literal["sgd", "adamw", "muon"]
METRIC_BASES: tuple[str, ...] = get_args(MetricBase)
MetricPlace = Literal["output", "gradient"]
METRIC_PLACES: tuple[str, ...] = get_args(MetricPlace)
LossGraph = Literal["loss", "log_loss"]
LOSS_GRAPHS: tuple[str, ...] = get_args(LossGraph)


def reference_sgd(momentum: float) -> Chain:
    """The reference's base (``custom_sgd`` without its metric): ``m <- mu m + (1 - mu) g``,
    ``u <- m / (1 - mu^t)``, decoupled decay ``u + lambda theta`` (``theta (1 - lr lambda)``)."""
    check_beta("momentum", momentum)
    if momentum == 0:
        return chain(AddWeightDecay())
    return chain(
        Momentum(beta=momentum, kind="ema"), DebiasMomentum(beta=momentum), AddWeightDecay()
    )


def with_metric(recipe: Chain, metric: InducedMetric, place: MetricPlace) -> Chain:
    """``recipe`` with ``metric`` on its raw gradient (``place="gradient"``: first) or on its
    output (``"output"``: before the trailing transforms the final update folds, the shape
    scale and decoupled decay, which the reference leaves unscaled; else last)."""
    check_choice("place", place, METRIC_PLACES)
    ts = recipe.transforms
    if place == "gradient":
        return Chain((metric, *ts))
    tail = len(ts)
    while tail > 0 and ts[tail - 1].foldable:
        tail -= 1
    return Chain((*ts[:tail], metric, *ts[tail:]))


@overload
def induced_metric(
    base: Chain | MetricBase = ...,
    *,
    xi: float = ...,
    metric_beta: float = ...,
    scope: MetricScope = ...,
    inverse: MetricInverse = ...,
    place: MetricPlace = ...,
    momentum: float = ...,
    graph: LossGraph = ...,
) -> Chain | Plan: ...


@overload
def induced_metric(
    base: Plan,
    *,
    xi: float = ...,
    metric_beta: float = ...,
    scope: MetricScope = ...,
    inverse: MetricInverse = ...,
    place: MetricPlace = ...,
    momentum: float = ...,
    graph: LossGraph = ...,
) -> Plan: ...


def induced_metric(
    base: Chain | Plan | MetricBase = "sgd",
    *,
    xi: float = default(InducedMetric, "xi"),
    metric_beta: float = default(InducedMetric, "beta"),
    scope: MetricScope = default(InducedMetric, "scope"),
    inverse: MetricInverse = default(InducedMetric, "inverse"),
    place: MetricPlace = "output",
    momentum: float = 0.9,
    graph: LossGraph = "loss",
) -> Chain | Plan:
    """The induced-metric optimiser (Harvey 2025, arXiv 2509.03594) on any base.

    The loss landscape as the graph of the loss in ``R^{n+1}`` induces the metric ``G = I + xi
    g g^T`` on the parameters; its inverse (Sherman-Morrison, O(n)) cuts the step where the
    gradient is large: ``G^{-1} g = g / (1 + xi ||g||^2)``, a smooth gradient clipping that
    keeps the direction (``transforms.induced_metric.InducedMetric``). The paper applies it to
    any preconditioner; the reference rescales the base's output (its momentum, or its
    RMS-preconditioned momentum) by ``1 / (1 + tau_hat)``, ``tau_hat`` the bias-corrected EMA
    (``metric_beta``) of ``xi ||g||^2`` over the whole model, the decoupled decay unscaled.

    ``base``: ``"sgd"`` (default, the reference's ``custom_sgd``: EMA momentum ``m <- mu m +
    (1 - mu) g``, bias-corrected, then the metric, then decoupled decay); ``"adamw"``
    (``recipes.adamw()`` under the metric); ``"muon"`` (a whole-model plan: Muon under the
    metric for hidden matrices, ``with_adamw`` AdamW for the rest, the metric's scope being
    the Muon route); or any ``Chain`` (``induced_metric(adamw())``) or ``Plan`` (every route
    under its own metric). ``momentum`` belongs to ``"sgd"`` (``ValueError`` if set with
    another base).

    Options (each a named choice, the reference's first):

    - ``scope``: ``"model"``, one norm over every parameter of the route (the reference's
      whole-model norm; one process only, ``ValueError`` under DDP/FSDP2), or ``"parameter"``,
      each tensor its own metric (runs distributed);
    - ``inverse``: ``"scale"``, ``u / (1 + tau_hat)`` (the reference), or
      ``"sherman_morrison"``, the rank-one inverse applied to ``u`` itself (only its
      component along ``g`` shrinks; the two agree for a base without momentum or
      preconditioner);
    - ``place``: ``"output"``, the metric rescales the base's update (the reference, for its
      momentum and RMS variants), or ``"gradient"``, it preconditions the raw gradient before
      the base (then ``"scale"`` and ``"sherman_morrison"`` agree; a scale-invariant base such
      as Adam or Muon then undoes most of it).

    - ``graph``: ``"loss"``, the graph of ``L`` (the reference's ``custom_sgd``), or
      ``"log_loss"``, the graph of ``log L`` (the reference's ``custom_sgd_log``): the plan's
      gradients divided by the closure's loss (``LogLossGradient``, a plan-level estimator;
      ``step(closure)`` with a closure returning the loss), so that a step along the gradient
      is ``L g / (L^2 + xi ||g||^2)``, an effective lr that rises as the loss falls.

    State: the base's, plus one 0-d trace per tensor (4 bytes); ``"sgd"``: one momentum
    buffer, 4 bytes per float32 element. One forward and one backward pass per step (with
    ``graph="log_loss"`` too: it reads the closure's loss).

    Differences from the reference (harveyThomas4692/Induced-Metric-Optimiser@754ae88
    ``optimisers/torch_imp.py``, ``jax_imp.py``): ``graph="log_loss"`` divides the gradient by
    ``L`` before the base, so the momentum averages ``g / L`` and the trace ``xi ||g||^2 /
    L^2``, where ``custom_sgd_log`` averages ``g`` and ``xi ||g||^2`` and scales the step by
    ``L / (L^2 + tau_hat)`` with this step's ``L`` (equal without momentum and with
    ``metric_beta=0``; a loss below 1e-12 is taken as 1e-12); its ``custom_sgd_rms``
    (RMSprop scaling with the trace ``xi sum g^2 / (sqrt(v_hat) + eps)``) is not offered:
    ``base="adamw"`` keeps Adam's own update and the Euclidean trace ``xi ||g||^2``; the Muon
    and Adam bases, compared against in the paper, are not in the reference code; our default
    ``scope="model"`` spans one route (with ``base="muon"`` the hidden matrices, not the AdamW
    route's; a plan from ``base="muon"`` needs the model or param groups with roles, as every
    plan); the trace EMA is bias-corrected by the parameter's own step counter, as the
    reference's.

    References: Thomas R. Harvey, "The Optimiser Hidden in Plain Sight: Training with the Loss
    Landscape's Induced Metric" (arXiv 2509.03594); harveyThomas4692/Induced-Metric-Optimiser
    @754ae88c39a558b4530baa229b626193b5ad25c2 optimisers/torch_imp.py ``CustomSGD``.
    """
    metric = InducedMetric(xi=xi, beta=metric_beta, scope=scope, inverse=inverse)
    check_choice("place", place, METRIC_PLACES)
    check_choice("graph", graph, LOSS_GRAPHS)
    made = _on_base(base, metric, place, momentum)
    return made if graph == "loss" else estimated(made, LogLossGradient())


def _on_base(
    base: Chain | Plan | MetricBase, metric: InducedMetric, place: MetricPlace, momentum: float
) -> Chain | Plan:
    """``base`` under ``metric`` (``induced_metric``'s docstring)."""
    if isinstance(base, str):
        check_choice("base", base, METRIC_BASES)
    if momentum != 0.9 and base != "sgd":
        raise ValueError(
            f"momentum={momentum!r} sets the reference SGD's momentum; with base={base!r} set "
            "the base's own options instead"
        )
    if base == "sgd":
        return with_metric(reference_sgd(momentum), metric, place)
    if base == "adamw":
        return with_metric(adamw(), metric, place)
    if base == "muon":
        hidden = with_metric(muon(), metric, place)
        return with_adamw(hidden, name="induced_metric", adamw_route=MUON_ADAMW)
    if isinstance(base, Plan):  # its estimator, if any, kept: the metric acts on what it gives
        return dataclasses.replace(
            base,
            routes=tuple(
                dataclasses.replace(r, chain=with_metric(r.chain, metric, place))
                for r in base.routes
            ),
        )
    if isinstance(base, Chain):
        return with_metric(base, metric, place)
    raise TypeError(f"base must be a Chain, a Plan or one of {METRIC_BASES}, got {base!r}")
