"""Layer 3: one short function per optimizer, each a chain of transforms; ``plan.with_adamw``
completes a matrix optimizer with AdamW for a whole model.

Defaults are written once. A transform's dataclass field defaults are the source: a recipe
keyword that sets a transform field takes that field's default, read with
``options.default(Transform, "field")``; a recipe writes a literal default only where it departs
from the transform's (Muon's momentum 0.95 against ``Momentum``'s 0.9) or where the keyword is
the recipe's own (``normuon``'s ``normalize_neurons``). The recipe's signature, which
``Spec.options()`` reads, thus shows every default, and a transform built directly (in tests, by
hand) has the same ones.

Variants are built from their base recipe's chain, not re-listed: ``Chain.insert`` and
``Chain.replace`` edit a built chain by state key (``normuon``, ``mkor_h``, ``cautious``), and
``options.extends(base, ...)`` gives a variant its base's keyword options (names, types, order,
defaults, some replaced or dropped) plus its own (``muon_polar``, ``normuon``, ``muon_nalr``,
``mkor_h``), so none repeats a default of its base.
"""

from orthoptim.recipes.auon import auon, hybrid_auon
from orthoptim.recipes.baselines import adamw, sgd
from orthoptim.recipes.deepzero import deepzero
from orthoptim.recipes.efcp import efcp
from orthoptim.recipes.first_order import gravity, innaprop, optimistic_amsgrad
from orthoptim.recipes.fismo import fismo
from orthoptim.recipes.gradient_sign import cautious, grams
from orthoptim.recipes.induced_metric import induced_metric
from orthoptim.recipes.kronecker import shampoo, soap
from orthoptim.recipes.lowrank import frugal, lowrank_adamw
from orthoptim.recipes.mars import mars_adamw, mars_lion
from orthoptim.recipes.mfac import mfac
from orthoptim.recipes.mkor import mkor, mkor_h
from orthoptim.recipes.more_momentum import more_momentum
from orthoptim.recipes.muon import muon, muon_polar
from orthoptim.recipes.nalr import muon_nalr, noise_adaptive
from orthoptim.recipes.normuon import normuon
from orthoptim.recipes.oasis import oasis
from orthoptim.recipes.plan import (
    PLAN_OPTIONS,
    AdamWRoute,
    Plan,
    Route,
    estimated,
    group_lr,
    with_adamw,
)
from orthoptim.recipes.psgd import psgd_kron
from orthoptim.recipes.psgd_lra import psgd_lra
from orthoptim.recipes.radial import adamp, sgdp
from orthoptim.recipes.root import root
from orthoptim.recipes.saddle_free import saddle_free_newton
from orthoptim.recipes.sharpness import fd_gradreg, gam, sam
from orthoptim.recipes.smb import smb
from orthoptim.recipes.spd import spd_momentum

__all__ = [
    "PLAN_OPTIONS",
    "AdamWRoute",
    "Plan",
    "Route",
    "adamp",
    "adamw",
    "auon",
    "cautious",
    "deepzero",
    "efcp",
    "estimated",
    "fd_gradreg",
    "fismo",
    "frugal",
    "gam",
    "grams",
    "gravity",
    "group_lr",
    "hybrid_auon",
    "induced_metric",
    "innaprop",
    "lowrank_adamw",
    "mars_adamw",
    "mars_lion",
    "mfac",
    "mkor",
    "mkor_h",
    "more_momentum",
    "muon",
    "muon_nalr",
    "muon_polar",
    "noise_adaptive",
    "normuon",
    "oasis",
    "optimistic_amsgrad",
    "psgd_kron",
    "psgd_lra",
    "root",
    "saddle_free_newton",
    "sam",
    "sgd",
    "sgdp",
    "shampoo",
    "smb",
    "soap",
    "spd_momentum",
    "with_adamw",
]
