"""Switching from AdamW in one line: ``orthoptim.build(name, model, from_adamw_lr=3e-4)``.

The AdamW route (embeddings, head, biases, norm gains) keeps the user's AdamW lr, and the matrix
route gets the lr at which its update has the RMS of AdamW's: Moonlight's matching (Liu et al.
2025, "Muon is Scalable for LLM Training", arXiv 2502.16982, section 2.2): AdamW's update RMS
is typically 0.2 to 0.4, and Muon's orthogonalised update ``O`` scaled by ``0.2 sqrt(max(A,
B))`` (``shape_scale="moonlight_rms"``) has RMS 0.2, so both routes share AdamW's lr. The same
rule holds for every family whose update RMS is known from its last transforms: that is the
table ``FROM_ADAMW``, one entry per registry name, each with the recipe options it needs and
the RMS its update then has. A family whose update RMS depends on the data in a way no option
fixes (AuON's cosh scale, PSGD, MKOR, M-FAC, the noise-adaptive layer scale, low-rank and
block-wise Adam) is not in it, and ``from_adamw_lr`` raises ``ValueError`` naming those that
are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orthoptim.recipes.plan import Plan

ADAMW_UPDATE_RMS = 0.2
"""The AdamW update RMS the match targets: Moonlight's (arXiv 2502.16982, section 2.2), the
lower end of AdamW's typical 0.2 to 0.4."""

_MOONLIGHT = (
    "orthogonalised update x 0.2 sqrt(max(rows, cols)) has RMS 0.2, AdamW's (Moonlight, "
    "Liu et al. 2025, arXiv 2502.16982)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdamWMatch:
    """How a family's matrix route matches AdamW's update RMS.

    Args:
        options: recipe options the match needs; set where the user gives none, and a
            different value given raises ``ValueError``.
        update_rms: the RMS of the route's update per unit lr under those options; ``None``
            where the update is Adam's own size (Adam grafting), which is AdamW's whatever it
            is.
        reason: the rule in words, with its source, for ``describe()`` and ``explain()``.
    """

    options: Mapping[str, Any]
    update_rms: float | None
    reason: str

    @property
    def lr_ratio(self) -> float:
        """The matrix route's lr over AdamW's."""
        return 1.0 if self.update_rms is None else ADAMW_UPDATE_RMS / self.update_rms


_ORTHOGONAL = AdamWMatch(
    options={"shape_scale": "moonlight_rms"}, update_rms=0.2, reason=_MOONLIGHT
)

FROM_ADAMW: Mapping[str, AdamWMatch] = {
    "muon": _ORTHOGONAL,
    "muon_polar": _ORTHOGONAL,
    "root": _ORTHOGONAL,
    "fismo": _ORTHOGONAL,
    "normuon": AdamWMatch(
        options={"shape_scale": "constant_rms"},
        update_rms=0.2,
        reason=(
            "every update rescaled to RMS 0.2 (NorMuon's step size, arXiv 2510.05491 "
            "Algorithm 1 line 10), AdamW's (Moonlight, arXiv 2502.16982)"
        ),
    ),
    "shampoo": AdamWMatch(
        options={"grafting": "adam"},
        update_rms=None,
        reason="Adam grafting gives each update the norm of Adam's step (Shi et al. 2023)",
    ),
    "mars_lion": AdamWMatch(
        options={},
        update_rms=1.0,
        reason=(
            "a sign update has RMS 1, AdamW's is 0.2 (Moonlight, arXiv 2502.16982): lr x 0.2, "
            "within Lion's advice of 3-10x below AdamW's (Chen et al. 2023, arXiv 2302.06675)"
        ),
    ),
}
"""The families ``from_adamw_lr`` supports, by registry name."""

CONFLICTS: tuple[str, ...] = ("lr", "adamw_lr", "adamw_lr_scale")
"""What ``from_adamw_lr`` sets, so none of them may be given with it."""


def from_adamw(
    name: str, adamw_lr: float, given: Mapping[str, Any]
) -> tuple[float, dict[str, Any], str]:
    """``(matrix lr, options, rule)`` for ``build(name, model, from_adamw_lr=adamw_lr,
    **given)``: ``options`` are ``given`` with the match's recipe options and ``adamw_lr``;
    ``ValueError`` for a family not in ``FROM_ADAMW``, an option ``given`` against the match,
    or ``adamw_lr`` / ``adamw_lr_scale`` given too."""
    if not (isinstance(adamw_lr, int | float) and adamw_lr > 0 and adamw_lr < float("inf")):
        raise ValueError(f"from_adamw_lr must be a positive finite number, got {adamw_lr!r}")
    match = FROM_ADAMW.get(name)
    if match is None:
        raise ValueError(
            f"from_adamw_lr matches the matrix route's update RMS to AdamW's, which needs a "
            f"plan whose update RMS is known: {', '.join(FROM_ADAMW)}; {name}'s is not (set "
            "lr= and adamw_lr= yourself)"
        )
    clash = [k for k in CONFLICTS if given.get(k) is not None]
    if clash:
        raise ValueError(
            f"from_adamw_lr sets {', '.join(CONFLICTS)} itself; do not give {', '.join(clash)} "
            "with it (or drop from_adamw_lr and give them all)"
        )
    for key, value in match.options.items():
        if given.get(key) is not None and given[key] != value:
            raise ValueError(
                f"from_adamw_lr matches {name}'s update RMS to AdamW's with {key}={value!r} "
                f"({match.reason}); got {key}={given[key]!r}"
            )
    options = {k: v for k, v in given.items() if k != "lr"} | dict(match.options)
    options["adamw_lr"] = adamw_lr
    lr = adamw_lr * match.lr_ratio
    rule = (
        f"from_adamw_lr={adamw_lr:g}: AdamW route at it, {name} route at {match.lr_ratio:g} x "
        f"it = {lr:g}: {match.reason}"
    )
    return lr, options, rule


def with_lr_rule(plan: Plan, rule: str) -> Plan:
    """``plan`` with ``rule`` as every route's ``lr_rule`` (shown by ``describe`` and
    ``explain``)."""
    return dataclasses.replace(
        plan, routes=tuple(dataclasses.replace(r, lr_rule=rule) for r in plan.routes)
    )
