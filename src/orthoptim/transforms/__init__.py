"""Layer 2: small stateful transforms (frozen dataclasses) and ``chain``."""

from orthoptim.transforms.adaptive import ScaleByAdam
from orthoptim.transforms.base import Chain, Ctx, Transform, TransformBase, chain, explain
from orthoptim.transforms.momentum import Momentum
from orthoptim.transforms.orthogonalize import Orthogonalize
from orthoptim.transforms.scaling import AddWeightDecay, ScaleByShape, shape_factor

__all__ = [
    "AddWeightDecay",
    "Chain",
    "Ctx",
    "Momentum",
    "Orthogonalize",
    "ScaleByAdam",
    "ScaleByShape",
    "Transform",
    "TransformBase",
    "chain",
    "explain",
    "shape_factor",
]
