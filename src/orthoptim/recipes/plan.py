"""Plans: which chain updates which parameter role.

A ``Plan`` is an ordered tuple of ``Route``\\s; each route owns a chain, the roles it updates, and
how its learning rate and weight decay relate to the optimizer's. Roles are ``"hidden"``
(matrices inside the network), ``"embedding"``, ``"head"`` (output layer) and ``"vector"``
(biases, norm gains, scalars); ``orthoptim.routing.classify`` assigns them.
"""

from __future__ import annotations

from dataclasses import dataclass

from orthoptim._checks import check_finite_nonnegative, check_positive
from orthoptim._types import ROLES
from orthoptim.transforms.base import Chain


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One chain and the roles it updates.

    Args:
        name: the route's name, stored in each of its param groups as ``group["route"]``.
        chain: the update rule.
        roles: the roles it updates.
        lr_scale: its groups' lr is the optimizer's lr times this.
        weight_decay: its groups' weight decay; ``None`` takes the optimizer's.
    """

    name: str
    chain: Chain
    roles: tuple[str, ...] = ROLES
    lr_scale: float = 1.0
    weight_decay: float | None = None

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
        check_positive(f"route {self.name!r} lr_scale", self.lr_scale)
        if self.weight_decay is not None:
            check_finite_nonnegative(f"route {self.name!r} weight_decay", self.weight_decay)


@dataclass(frozen=True, slots=True)
class Plan:
    """Routes that together cover every role exactly once."""

    routes: tuple[Route, ...]

    def __post_init__(self) -> None:
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
