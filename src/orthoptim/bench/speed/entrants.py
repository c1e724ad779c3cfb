"""Who ``orthoptim speed`` times: orthoptim's optimizers (with variants of ``muon`` and ``adamw``
timed beside their defaults), the check on its own, and the peers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from orthoptim import registry
from orthoptim.bench.speed import peers as speed_peers
from orthoptim.bench.speed.hooked import hooked
from orthoptim.bench.speed.result import Entrant
from orthoptim.nonfinite import all_finite

# Entrant families timed head to head, in rounds of their own (``benchmark._time_entries``).
HEAD_FAMILIES: tuple[str, ...] = ("muon", "adamw", "check")


def refresh_period(name: str) -> int:
    """The longest period of a registered optimizer's periodic work (its ``*_every``
    options), 1 when it has none."""
    periods = [v for k, v in registry.get(name).options().items() if k.endswith("_every")]
    return max([1, *(int(v) for v in periods)])


def _orthoptim(name: str, **options: Any) -> Callable[[list[torch.Tensor]], Any]:
    def make(params: list[torch.Tensor]) -> Any:
        return registry.build(name, params, **options)

    return make


# Variants timed beside their defaults: torch.optim's behaviour (no non-finite check),
# Newton-Schulz batched by shape (an execution choice that pays on some machines), and a
# step that telemetry measures (telemetry_every=1: each timed step is a measured one; every
# N steps costs (its time / muon's - 1) / N of a muon step, and off nothing: the step is
# unchanged, tests/optim/test_telemetry.py).
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("adamw", "unchecked", {"nonfinite": "off"}),
    ("muon", "batched", {"batch_by_shape": True}),
    ("muon", "telemetry", {"telemetry_every": 1}),
)


def _variant(base: str, tag: str, options: dict[str, Any]) -> Entrant:
    return Entrant(
        f"orthoptim:{base}_{tag}", "orthoptim", base, base == "adamw", _orthoptim(base, **options)
    )


class NonFiniteCheck:
    """The shell's non-finite gradient check alone, as an entrant: what ``nonfinite="raise"``
    or ``"skip"`` (issue 6) costs every step of every orthoptim optimizer."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params

    def step(self) -> bool:
        return all_finite([p.grad for p in self.params if p.grad is not None])


def not_timed() -> dict[str, str]:
    """Registered matrix optimizers the benchmark cannot step, and why."""
    return {
        name: "needs a closure (two gradient evaluations per step)"
        for name in registry.names(tag="matrix")
        if registry.get(name).needs_closure
    }


def entrants(specs: Sequence[str] | None = None, peers: bool = True) -> list[Entrant]:
    """orthoptim's ``muon``, ``adamw`` and every other registered matrix optimizer (plans
    excluded: on hidden matrices a plan runs its matrix chain, timed under the base name; so
    are those that need a closure, see ``not_timed`` and ``closure``; those that read layer
    statistics through hooks step ``hooked.HookedLayers``), the element-wise ones in AdamW's
    family, then every installed peer. ``specs`` keeps only the
    orthoptim names listed."""
    out = [
        Entrant("orthoptim:muon", "orthoptim", "muon", False, _orthoptim("muon")),
        Entrant("orthoptim:adamw", "orthoptim", "adamw", True, _orthoptim("adamw")),
        Entrant("orthoptim:nonfinite_check", "orthoptim", "check", True, NonFiniteCheck),
    ]
    variants = [  # kept with their base name, timed in its family's rounds
        _variant(base, tag, options)
        for base, tag, options in VARIANTS
        if specs is None or base in specs
    ]
    skipped = not_timed()  # builds every spec's plan: once, not once per name
    for name in registry.names(tag="matrix"):
        spec = registry.get(name)
        if name == "muon" or "plan" in spec.tags or name in skipped:
            continue
        out.append(
            Entrant(
                f"orthoptim:{name}",
                "orthoptim",
                "matrix",
                False,
                hooked(name) if spec.needs_module else _orthoptim(name),
                period=refresh_period(name),
            )
        )
    # element-wise optimizers (the baselines excluded: adamw is timed above) step what AdamW
    # steps, in its rounds, against the same peers
    for name in registry.names(tag="elementwise"):
        spec = registry.get(name)
        if "baseline" in spec.tags or name in skipped or spec.needs_closure:
            continue
        out.append(Entrant(f"orthoptim:{name}", "orthoptim", "adamw", True, _orthoptim(name)))
    if specs is not None:
        out = [e for e in out if e.name.split(":", 1)[1] in specs or e.family == "check"]
    head = [e for e in out if e.family in HEAD_FAMILIES]
    out = head + variants + [e for e in out if e.family not in HEAD_FAMILIES]
    return out + speed_peers.entrants() if peers else out
