"""Layer 2: small stateful transforms (frozen dataclasses) and ``chain``."""

from orthoptim.transforms.adaptive import ScaleByAdam
from orthoptim.transforms.auon import ScaleByCoshRms
from orthoptim.transforms.base import Chain, Ctx, Transform, TransformBase, chain, explain
from orthoptim.transforms.fisher import FisherTrustRegion
from orthoptim.transforms.momentum import Momentum
from orthoptim.transforms.neuronwise import NormalizeNeurons
from orthoptim.transforms.noise_adaptive import ScaleByLayerNoise
from orthoptim.transforms.orthogonalize import Orthogonalize
from orthoptim.transforms.proximal import ClipOutliers
from orthoptim.transforms.scaling import AddWeightDecay, ScaleByShape, shape_factor

__all__ = [
    "AddWeightDecay",
    "Chain",
    "ClipOutliers",
    "Ctx",
    "FisherTrustRegion",
    "Momentum",
    "NormalizeNeurons",
    "Orthogonalize",
    "ScaleByAdam",
    "ScaleByCoshRms",
    "ScaleByLayerNoise",
    "ScaleByShape",
    "Transform",
    "TransformBase",
    "chain",
    "explain",
    "shape_factor",
]
