"""Layer 3: one short function per optimizer, each a chain of transforms (or a plan of chains)."""

from orthoptim.recipes.baselines import adamw, sgd
from orthoptim.recipes.muon import muon, muon_adamw, with_adamw
from orthoptim.recipes.plan import Plan, Route

__all__ = ["Plan", "Route", "adamw", "muon", "muon_adamw", "sgd", "with_adamw"]
