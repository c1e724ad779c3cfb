"""Plans: which chain updates which parameter role, and the one way to complete a matrix optimizer
with AdamW for a whole model.

A ``Plan`` is an ordered tuple of ``Route``\\s; each route owns a chain, the roles it updates, and
how its learning rate and weight decay relate to the optimizer's. Roles are ``"hidden"``
(matrices inside the network), ``"embedding"``, ``"head"`` (output layer) and ``"vector"``
(biases, norm gains, scalars); ``orthoptim.routing.classify`` assigns them.

Learning rates: every param group's ``lr`` is the optimizer's (scheduled) lr, and its
``lr_scale`` is its route's lr relative to the first route's; the step applies
``group_lr(group) = lr * lr_scale``. A torch scheduler that sets absolute values (``OneCycleLR``,
``CyclicLR``, ``CosineAnnealingLR``'s ``eta_min``) therefore moves every route together and keeps
the relation between them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from orthoptim._checks import check_finite_nonnegative, check_positive
from orthoptim._types import ROLES
from orthoptim.functional.layout import DEFAULT_LAYOUT
from orthoptim.recipes.baselines import adamw
from orthoptim.transforms import chain
from orthoptim.transforms.chain import Chain, explain
from orthoptim.transforms.estimator import GradientEstimator
from orthoptim.transforms.multi_momentum import CLUSTER_KEY
from orthoptim.transforms.variance import MarsCorrection

NON_HIDDEN_ROLES: tuple[str, ...] = ("embedding", "head", "vector")
LR_SCALE_KEY = "lr_scale"
LAYOUT_KEY = "layout"
"""Param-group key: the group's lr relative to the optimizer's scheduled lr (``group_lr``)."""


def group_layout(group: Mapping[str, Any]) -> str:
    """How a param group's parameters store their matrices (``functional.layout``)."""
    return str(group.get(LAYOUT_KEY, DEFAULT_LAYOUT))


MOMENT_KEYS: tuple[str, ...] = ("momentum", "betas")
"""The param-group keys of live moment coefficients, as torch's optimizers name them: SGD and
Muon's ``momentum``, Adam's ``betas``; torch's ``OneCycleLR`` and ``CyclicLR`` cycle them."""


def moment_key(chain: Chain) -> str | None:
    """The key a group of ``chain`` exposes its moments under: ``"momentum"`` for one
    coefficient, ``"betas"`` for two, ``None`` without any."""
    count = len(chain.moments)
    return None if count == 0 else ("momentum" if count == 1 else "betas")


def exposed_moments(chain: Chain, key: str) -> float | tuple[float, ...]:
    """``chain``'s moments as the group entry ``key`` holds them (``momentum``: the first)."""
    return chain.moments[0] if key == "momentum" else tuple(chain.moments)


def live_chain(chain: Chain, group: Mapping[str, Any]) -> Chain:
    """``chain`` with the moment coefficients its param group holds now: ``betas`` sets the
    first ones, ``momentum`` the first (in an Adam group: ``beta1``, as a scheduler cycling
    ``momentum`` over a whole plan sets it). ``chain`` itself when they are unchanged. A group
    with a ``"cluster"`` entry (``CLUSTER_KEY``) runs its chain for that data cluster
    (``Chain.with_cluster``: more_momentum with ``assignment="given"``)."""
    if CLUSTER_KEY in group:
        chain = chain.with_cluster(group[CLUSTER_KEY])
    moments = chain.moments
    if not moments:
        return chain
    live = list(moments)
    if "betas" in group:
        betas = tuple(group["betas"])
        live[: len(betas)] = [float(b) for b in betas[: len(live)]]
    if "momentum" in group:
        live[0] = float(group["momentum"])
    return chain if tuple(live) == moments else chain.with_moments(tuple(live))


def group_lr(group: Mapping[str, Any]) -> float:
    """The lr a param group's step uses: its (scheduled) ``lr`` times its route's ``lr_scale``."""
    return float(group["lr"]) * float(group.get(LR_SCALE_KEY, 1.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One chain and the roles it updates.

    Args:
        name: the route's name, stored in each of its param groups as ``group["route"]``.
        chain: the update rule.
        roles: the roles it updates.
        lr_scale: its lr is the optimizer's lr times this (1 when neither this nor ``lr`` is
            given).
        lr: its lr as an absolute value at the optimizer's initial lr; schedulers then scale it
            with the optimizer's lr (its groups get ``lr_scale = lr / optimizer lr``). At most
            one of ``lr`` and ``lr_scale``.
        weight_decay: its groups' weight decay; ``None`` takes the optimizer's.
        lr_rule: how its lr was chosen, in words with the rule's source, where a rule chose it
            (``build(..., from_adamw_lr=...)``, ``recipes.switch``); shown by ``explain`` and
            ``ChainOptimizer.describe``.
    """

    name: str
    chain: Chain
    roles: tuple[str, ...] = ROLES
    lr_scale: float | None = None
    lr: float | None = None
    weight_decay: float | None = None
    lr_rule: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a route needs a non-empty name")
        if not isinstance(self.chain, Chain):
            raise TypeError(
                f"route {self.name!r}: chain must be a Chain (e.g. recipes.muon()), got "
                f"{type(self.chain).__name__}"
            )
        for role in self.roles:
            if role not in ROLES:
                raise ValueError(f"route {self.name!r}: role must be one of {ROLES}, got {role!r}")
        if self.lr is not None and self.lr_scale is not None:
            raise ValueError(
                f"route {self.name!r}: give its lr as lr (absolute) or lr_scale (relative), not "
                f"both (got lr={self.lr}, lr_scale={self.lr_scale})"
            )
        if self.lr_scale is not None:
            check_positive(f"route {self.name!r} lr_scale", self.lr_scale)
        if self.lr is not None:
            check_positive(f"route {self.name!r} lr", self.lr)
        if self.weight_decay is not None:
            check_finite_nonnegative(f"route {self.name!r} weight_decay", self.weight_decay)

    def scale_at(self, lr: float) -> float:
        """Its lr relative to the optimizer's when the optimizer's lr is ``lr``."""
        if self.lr is None:
            return 1.0 if self.lr_scale is None else self.lr_scale
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(
                f"route {self.name!r} has an absolute lr ({self.lr:g}), which is kept relative to "
                f"the optimizer's lr so that schedulers move both; that needs a positive lr, "
                f"got {lr}"
            )
        return self.lr / lr

    def describe_lr(self) -> str:
        """``lr x 0.015`` or ``lr 0.008`` (absolute), for ``explain`` and ``show``."""
        return f"lr {self.lr:g}" if self.lr is not None else f"lr x {self.scale_at(1.0):g}"


@dataclass(frozen=True, slots=True)
class Plan:
    """Routes that together cover every role exactly once; the first route runs at the
    optimizer's lr."""

    routes: tuple[Route, ...]
    estimator: GradientEstimator | None = None
    """What gradient the routes see (``transforms.estimator``; ``None``: the closure's or
    ``backward``'s own): SAM's perturbed point, a zeroth-order estimate, ..."""

    def __post_init__(self) -> None:
        if self.estimator is not None and any(
            r.chain.previous_point is not None or r.chain.needs_hvp for r in self.routes
        ):
            raise ValueError(
                "a plan with a gradient estimator cannot also evaluate gradients at previous "
                "points (MARS variant='exact') or Hessian-vector products in a route: each "
                "would evaluate the closure at a different point; use one of them"
            )
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"route names must be unique, got {names}")
        covered = [role for r in self.routes for role in r.roles]
        missing = [role for role in ROLES if role not in covered]
        twice = sorted({role for role in covered if covered.count(role) > 1})
        if missing or twice:
            raise ValueError(
                f"a plan must route every role exactly once; missing {missing}, repeated {twice}"
            )

    @staticmethod
    def single(chain: Chain, name: str = "main") -> Plan:
        """One chain for every parameter."""
        return Plan((Route(name=name, chain=chain),))

    def explain(self) -> str:
        """The update rule of every route, one line per transform."""
        blocks = []
        for route in self.routes:
            wd = "optimizer's" if route.weight_decay is None else f"{route.weight_decay:g}"
            header = (
                f"route {route.name} ({', '.join(route.roles)}): {route.describe_lr()}, "
                f"weight decay {wd}"
            )
            body = "\n".join("  " + line for line in explain(route.chain).splitlines())
            blocks.append(f"{header}\n{body}")
        blocks += [f"lr rule: {rule}" for rule in self.lr_rules]
        if self.estimator is not None:
            blocks.insert(0, f"gradient: {self.estimator.explain()}")
        return "\n".join(blocks)

    def init(self, route: str, p: Tensor, layout: str = DEFAULT_LAYOUT) -> dict[str, Tensor]:
        """The buffers a parameter of ``route`` gets on its first step: its chain's, then the
        estimator's (``"estimator.<key>"``)."""
        return self.route_named(route).chain.init(p, layout) | self.estimator_init(p)

    def held(self, route: str, p: Tensor, layout: str = DEFAULT_LAYOUT) -> dict[str, Tensor]:
        """``init`` at the buffers' in-use sizes (``Chain.held``)."""
        return self.route_named(route).chain.held(p, layout) | self.estimator_init(p)

    def estimator_init(self, p: Tensor) -> dict[str, Tensor]:
        """The estimator's buffers of ``p`` under their state keys (``{}`` without one)."""
        if self.estimator is None:
            return {}
        return {f"estimator.{k}": v for k, v in self.estimator.init(p).items()}

    @property
    def lr_rules(self) -> list[str]:
        """The routes' ``lr_rule`` texts, each once, in route order."""
        return list(dict.fromkeys(r.lr_rule for r in self.routes if r.lr_rule))

    @property
    def needs_closure(self) -> bool:
        """Whether ``step`` needs a closure (the plan estimates its gradients, or a route's
        chain evaluates a second gradient or reads Hessian-vector products)."""
        return self.estimator is not None or any(r.chain.needs_closure for r in self.routes)

    @property
    def needs_graph(self) -> bool:
        """Whether the closure must call ``loss.backward(create_graph=True)`` (Hessian-vector
        products: a route's chain ``needs_hvp``, or the estimator ``needs_graph``)."""
        return self.needs_hvp or (self.estimator is not None and self.estimator.needs_graph)

    @property
    def closure_backward(self) -> bool:
        """Whether the closure computes gradients (``False``: a zeroth-order estimator's closure
        returns the loss only)."""
        return self.estimator is None or self.estimator.closure_backward

    @property
    def needs_hvp(self) -> bool:
        """Whether a route's chain reads Hessian-vector products (``orthoptim.hvp``)."""
        return any(r.chain.needs_hvp for r in self.routes)

    @property
    def needs_module(self) -> bool:
        """Whether a route's chain reads layer activations through module hooks."""
        return any(r.chain.needs_module for r in self.routes)

    @property
    def route_wide(self) -> bool:
        """Whether a route's chain needs all of the route's parameters in one step
        (``TransformBase.route_wide``): one process only."""
        return any(r.chain.route_wide for r in self.routes)

    @property
    def needs_roles(self) -> bool:
        """Whether parameters must be classified (more than one route)."""
        return len(self.routes) > 1

    def route_for(self, role: str) -> Route:
        for route in self.routes:
            if role in route.roles:
                return route
        raise ValueError(f"unknown role {role!r}; allowed: {ROLES}")

    def route_named(self, name: str) -> Route:
        for route in self.routes:
            if route.name == name:
                return route
        raise KeyError(f"no route {name!r}; routes: {[r.name for r in self.routes]}")


PLAN_OPTIONS: tuple[str, ...] = (
    "adamw_lr",
    "adamw_lr_scale",
    "adamw_weight_decay",
    "adamw_betas",
    "adamw_eps",
)
"""The whole-model plan's options, accepted by ``orthoptim.build`` beside the recipe's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdamWRoute:
    """The AdamW route that completes a matrix optimizer for a whole model.

    Args:
        lr_scale: AdamW's lr relative to the matrix optimizer's (the family's published pairing).
        lr: AdamW's lr as an absolute value instead (the migrating user's AdamW lr). At most one
            of ``lr`` and ``lr_scale`` is set; ``options`` replaces one by the other.
        betas: AdamW's betas.
        eps: AdamW's epsilon.
        weight_decay: AdamW's decoupled weight decay (embeddings, head, biases, norm gains).
        roles: the roles AdamW updates; the matrix optimizer gets the others.
    """

    lr_scale: float | None = 1.0
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-10
    weight_decay: float = 0.0
    roles: tuple[str, ...] = NON_HIDDEN_ROLES

    def defaults(self) -> dict[str, Any]:
        """``PLAN_OPTIONS`` and their values in this route."""
        return {
            "adamw_lr": self.lr,
            "adamw_lr_scale": self.lr_scale,
            "adamw_weight_decay": self.weight_decay,
            "adamw_betas": self.betas,
            "adamw_eps": self.eps,
        }

    def options(self, given: Mapping[str, Any]) -> AdamWRoute:
        """This route with the ``PLAN_OPTIONS`` in ``given`` applied. ``adamw_lr`` replaces the
        family's ``lr_scale`` and the reverse; both at once raise ``ValueError``."""
        unknown = sorted(set(given) - set(PLAN_OPTIONS))
        if unknown:
            raise TypeError(f"unknown plan option(s) {unknown}; allowed: {list(PLAN_OPTIONS)}")
        lr, lr_scale = given.get("adamw_lr"), given.get("adamw_lr_scale")
        if lr is not None and lr_scale is not None:
            raise ValueError(
                "give the AdamW route's lr as adamw_lr (absolute, e.g. your AdamW lr) or "
                f"adamw_lr_scale (relative to lr), not both; got adamw_lr={lr}, "
                f"adamw_lr_scale={lr_scale}"
            )
        changes: dict[str, Any] = {}
        if lr is not None:
            changes |= {"lr": lr, "lr_scale": None}
        if lr_scale is not None:
            changes |= {"lr": None, "lr_scale": lr_scale}
        for key in ("weight_decay", "betas", "eps"):
            if given.get(f"adamw_{key}") is not None:
                changes[key] = given[f"adamw_{key}"]
        if "betas" in changes:
            changes["betas"] = tuple(changes["betas"])
        return dataclasses.replace(self, **changes)


def estimated(base: Chain | Plan, estimator: GradientEstimator) -> Plan:
    """``base`` (a chain for every parameter, or a whole plan) stepping on the gradients
    ``estimator`` gives (``transforms.estimator``): ``recipes.sam(muon_plan)``-style wrappers
    over any optimizer."""
    if not isinstance(estimator, GradientEstimator):
        raise TypeError(f"estimator must be a GradientEstimator, got {estimator!r}")
    plan = Plan.single(base) if isinstance(base, Chain) else base
    if not isinstance(plan, Plan):
        raise TypeError(f"base must be a Chain or a Plan, got {base!r}")
    if plan.estimator is not None:
        raise ValueError(
            f"{base!r} already estimates its gradients with {plan.estimator!r}; one estimator "
            "per plan (combine them in one estimator, as GAM combines with SAM)"
        )
    return dataclasses.replace(plan, estimator=estimator)


def with_adamw(main: Chain, *, name: str, adamw_route: AdamWRoute | None = None) -> Plan:
    """A whole-model plan: ``main`` for the roles AdamW does not take, AdamW for the rest.

    This is the only way the library completes a matrix optimizer for a whole model; each
    registered matrix optimizer declares its ``AdamWRoute`` (``orthoptim.specs``), and
    ``orthoptim.build(name, model, adamw_lr=...)`` applies the user's ``PLAN_OPTIONS`` to it.
    When ``main`` needs the gradient at the previous parameters (exact MARS), the AdamW route
    records its previous point too (``MarsCorrection(gamma=0)``, an identity), so the closure's
    second evaluation sees the whole model at its previous parameters.
    """
    if not isinstance(main, Chain):
        raise TypeError(f"the main route must be a Chain such as recipes.{name}(), got {main!r}")
    aux = AdamWRoute() if adamw_route is None else adamw_route
    rest = adamw(betas=aux.betas, eps=aux.eps)
    if main.previous_point is not None:
        record = MarsCorrection(gamma=0.0, beta1=aux.betas[0], clip=None, variant="exact")
        rest = chain(record, rest)
    return Plan(
        (
            Route(name=name, chain=main, roles=tuple(r for r in ROLES if r not in aux.roles)),
            Route(
                name="adamw",
                chain=rest,
                roles=aux.roles,
                lr_scale=aux.lr_scale,
                lr=aux.lr,
                weight_decay=aux.weight_decay,
            ),
        )
    )
