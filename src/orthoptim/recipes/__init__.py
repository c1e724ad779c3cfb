"""Layer 3: one short function per optimizer, each a chain of transforms (or a plan of chains)."""

from orthoptim.recipes.auon import auon, auon_adamw, hybrid_auon, hybrid_auon_adamw
from orthoptim.recipes.baselines import adamw, sgd
from orthoptim.recipes.fismo import fismo, fismo_adamw
from orthoptim.recipes.kronecker import shampoo, shampoo_adamw, soap
from orthoptim.recipes.lowrank import frugal, frugal_plan, lowrank_adamw, lowrank_adamw_plan
from orthoptim.recipes.mars import mars_adamw, mars_lion, mars_lion_plan, mars_plan
from orthoptim.recipes.mfac import mfac
from orthoptim.recipes.mkor import mkor, mkor_adamw, mkor_h
from orthoptim.recipes.muon import muon, muon_adamw, with_adamw
from orthoptim.recipes.muon_variants import muon_polar
from orthoptim.recipes.nalr import muon_nalr, muon_nalr_adamw, noise_adaptive
from orthoptim.recipes.neighbours import adamp, cautious, grams, sgdp
from orthoptim.recipes.normuon import normuon, normuon_adamw
from orthoptim.recipes.plan import Plan, Route
from orthoptim.recipes.root import root, root_adamw

__all__ = [
    "Plan",
    "Route",
    "adamp",
    "adamw",
    "auon",
    "auon_adamw",
    "cautious",
    "fismo",
    "fismo_adamw",
    "frugal",
    "frugal_plan",
    "grams",
    "hybrid_auon",
    "hybrid_auon_adamw",
    "lowrank_adamw",
    "lowrank_adamw_plan",
    "mars_adamw",
    "mars_lion",
    "mars_lion_plan",
    "mars_plan",
    "mfac",
    "mkor",
    "mkor_adamw",
    "mkor_h",
    "muon",
    "muon_adamw",
    "muon_nalr",
    "muon_nalr_adamw",
    "muon_polar",
    "noise_adaptive",
    "normuon",
    "normuon_adamw",
    "root",
    "root_adamw",
    "sgd",
    "sgdp",
    "shampoo",
    "shampoo_adamw",
    "soap",
    "with_adamw",
]
