"""Layer 3: one short function per optimizer, each a chain of transforms (or a plan of chains)."""

from orthoptim.recipes.auon import auon, auon_adamw, hybrid_auon, hybrid_auon_adamw
from orthoptim.recipes.baselines import adamw, sgd
from orthoptim.recipes.fismo import fismo, fismo_adamw
from orthoptim.recipes.muon import muon, muon_adamw, with_adamw
from orthoptim.recipes.muon_variants import muon_polar
from orthoptim.recipes.nalr import muon_nalr, muon_nalr_adamw, noise_adaptive
from orthoptim.recipes.normuon import normuon, normuon_adamw
from orthoptim.recipes.plan import Plan, Route
from orthoptim.recipes.root import root, root_adamw

__all__ = [
    "Plan",
    "Route",
    "adamw",
    "auon",
    "auon_adamw",
    "fismo",
    "fismo_adamw",
    "hybrid_auon",
    "hybrid_auon_adamw",
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
    "with_adamw",
]
