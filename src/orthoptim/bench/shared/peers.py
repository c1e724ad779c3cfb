"""What the race's peers and the speed benchmark's peers share: the registry's ``muon`` defaults
in the terms other libraries understand (``muon_defaults``), ``only`` (the one transform of a
kind in a chain) and heavyball run eagerly (``heavyball``, ``Eager``)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orthoptim import registry
from orthoptim.transforms import Momentum, Orthogonalize, ScaleByAdam, ScaleByShape


class Eager:
    """Runs a heavyball optimizer with ``heavyball.utils.compile_mode = None`` (restored after)."""

    def __init__(self, opt: Any, utils: Any) -> None:
        self.optimizers = (opt,)
        self._utils = utils

    @contextlib.contextmanager
    def _eager(self) -> Iterator[None]:
        old, self._utils.compile_mode = self._utils.compile_mode, None
        try:
            yield
        finally:
            self._utils.compile_mode = old

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizers[0].zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        with self._eager():
            self.optimizers[0].step()


@dataclass(frozen=True, slots=True)
class MuonDefaults:
    """The registry's ``muon`` whole-model plan, in the terms peers understand."""

    lr: float
    weight_decay: float
    momentum: float
    nesterov: bool
    ns_steps: int
    coeffs: str
    shape_rule: str
    adamw_lr_scale: float
    adamw_weight_decay: float
    adamw_betas: tuple[float, float]
    adamw_eps: float


def only(chain: Any, kind: type) -> Any:
    found = [t for t in chain.transforms if isinstance(t, kind)]
    if len(found) != 1:
        raise ValueError(f"expected one {kind.__name__} in {chain!r}")
    return found[0]


def muon_defaults() -> MuonDefaults:
    """Read ``muon``'s defaults from its plan; ``ValueError`` if the recipe no longer has the
    Momentum > Orthogonalize > ScaleByShape / ScaleByAdam shape peers can mirror."""
    spec = registry.get("muon")
    plan = spec.whole_model_plan()
    hidden = plan.route_for("hidden")
    rest = {plan.route_for(role).name for role in ("embedding", "head", "vector")}
    if len(rest) != 1:
        raise ValueError("muon's plan routes the non-hidden roles to more than one chain")
    other = plan.route_for("vector")
    if spec.adamw is None or spec.adamw.lr_scale is None:
        raise ValueError("muon's AdamW route has no default ratio to mirror")
    mom, ortho = only(hidden.chain, Momentum), only(hidden.chain, Orthogonalize)
    if mom.kind != "ema":
        raise ValueError("peers mirror EMA momentum only")
    adam = only(other.chain, ScaleByAdam)
    return MuonDefaults(
        lr=spec.lr,
        weight_decay=spec.weight_decay if hidden.weight_decay is None else hidden.weight_decay,
        momentum=mom.beta,
        nesterov=mom.nesterov,
        ns_steps=ortho.ns_steps,
        coeffs=ortho.coeffs,
        shape_rule=only(hidden.chain, ScaleByShape).rule,
        adamw_lr_scale=spec.adamw.lr_scale,
        adamw_weight_decay=spec.weight_decay if other.weight_decay is None else other.weight_decay,
        adamw_betas=tuple(adam.betas),
        adamw_eps=adam.eps,
    )


def heavyball() -> Any:
    """heavyball and ``heavyball.utils`` (imported on demand: an optional peer)."""
    hb = importlib.import_module("heavyball")
    return hb, importlib.import_module("heavyball.utils")
