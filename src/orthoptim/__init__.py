"""orthoptim: matrix-aware optimizers for PyTorch, built from small tested transforms.

Quick start::

    import orthoptim
    opt = orthoptim.build("muon", model, lr=0.02)
"""

from orthoptim import functional, recipes, registry, routing, transforms
from orthoptim.estimate import Estimate, estimate
from orthoptim.nonfinite import NonFiniteGradientError
from orthoptim.optim import ChainOptimizer
from orthoptim.recipes import Plan, Route
from orthoptim.registry import Spec, build, names
from orthoptim.routing import classify
from orthoptim.transforms import Chain, chain, explain

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "ChainOptimizer",
    "Estimate",
    "NonFiniteGradientError",
    "Plan",
    "Route",
    "Spec",
    "__version__",
    "build",
    "chain",
    "classify",
    "estimate",
    "explain",
    "functional",
    "names",
    "recipes",
    "registry",
    "routing",
    "transforms",
]
