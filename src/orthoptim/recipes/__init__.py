"""Layer 3: one short function per optimizer, each a chain of transforms; ``plan.with_adamw``
completes a matrix optimizer with AdamW for a whole model."""

from orthoptim.recipes.auon import auon, hybrid_auon
from orthoptim.recipes.baselines import adamw, sgd
from orthoptim.recipes.fismo import fismo
from orthoptim.recipes.kronecker import shampoo, soap
from orthoptim.recipes.lowrank import frugal, lowrank_adamw
from orthoptim.recipes.mars import mars_adamw, mars_lion
from orthoptim.recipes.mfac import mfac
from orthoptim.recipes.mkor import mkor, mkor_h
from orthoptim.recipes.muon import muon, muon_polar
from orthoptim.recipes.nalr import muon_nalr, noise_adaptive
from orthoptim.recipes.neighbours import adamp, cautious, grams, sgdp
from orthoptim.recipes.normuon import normuon
from orthoptim.recipes.plan import PLAN_OPTIONS, AdamWRoute, Plan, Route, group_lr, with_adamw
from orthoptim.recipes.root import root

__all__ = [
    "PLAN_OPTIONS",
    "AdamWRoute",
    "Plan",
    "Route",
    "adamp",
    "adamw",
    "auon",
    "cautious",
    "fismo",
    "frugal",
    "grams",
    "group_lr",
    "hybrid_auon",
    "lowrank_adamw",
    "mars_adamw",
    "mars_lion",
    "mfac",
    "mkor",
    "mkor_h",
    "muon",
    "muon_nalr",
    "muon_polar",
    "noise_adaptive",
    "normuon",
    "root",
    "sgd",
    "sgdp",
    "shampoo",
    "soap",
    "with_adamw",
]
