"""Layer 2: small stateful transforms (frozen dataclasses) and ``chain``."""

from orthoptim.transforms.adaptive import ScaleByAdam
from orthoptim.transforms.auon import ScaleByCoshRms
from orthoptim.transforms.base import Ctx, Transform, TransformBase
from orthoptim.transforms.capture import ActivationCapture
from orthoptim.transforms.cautious import CautiousMask
from orthoptim.transforms.chain import Chain, chain, explain
from orthoptim.transforms.efcp import EfcpPrecondition
from orthoptim.transforms.estimator import EstimatorGroup, GradientEstimator, LossOracle
from orthoptim.transforms.fisher import FisherTrustRegion
from orthoptim.transforms.grams import AlignToGradientSign
from orthoptim.transforms.gravity import GravityVelocity
from orthoptim.transforms.induced_metric import DebiasMomentum, InducedMetric
from orthoptim.transforms.inertial import InertialNewton, ScaleByRms
from orthoptim.transforms.kronecker import AdamInEigenbasis, ShampooPrecondition
from orthoptim.transforms.lowrank import LowRankAdam
from orthoptim.transforms.mfac import MFacPrecondition
from orthoptim.transforms.mkor import MKORHybridPrecondition, MKORPrecondition
from orthoptim.transforms.momentum import Momentum
from orthoptim.transforms.multi_momentum import MultiMomentum
from orthoptim.transforms.neuronwise import NormalizeNeurons
from orthoptim.transforms.noise_adaptive import ScaleByLayerNoise
from orthoptim.transforms.optimistic import OptimisticAMSGrad
from orthoptim.transforms.orthogonalize import Orthogonalize
from orthoptim.transforms.proximal import ClipOutliers
from orthoptim.transforms.psgd import PSGDKronPrecondition
from orthoptim.transforms.psgd_lra import PSGDLRAPrecondition
from orthoptim.transforms.radial import Dampen, ProjectRadial
from orthoptim.transforms.scaling import AddWeightDecay, ScaleByShape, shape_factor
from orthoptim.transforms.sign import LionSign
from orthoptim.transforms.spd import SPDPrecondition
from orthoptim.transforms.variance import MarsCorrection

__all__ = [
    "ActivationCapture",
    "AdamInEigenbasis",
    "AddWeightDecay",
    "AlignToGradientSign",
    "CautiousMask",
    "Chain",
    "ClipOutliers",
    "Ctx",
    "Dampen",
    "DebiasMomentum",
    "EfcpPrecondition",
    "EstimatorGroup",
    "FisherTrustRegion",
    "GradientEstimator",
    "GravityVelocity",
    "InducedMetric",
    "InertialNewton",
    "LionSign",
    "LossOracle",
    "LowRankAdam",
    "MFacPrecondition",
    "MKORHybridPrecondition",
    "MKORPrecondition",
    "MarsCorrection",
    "Momentum",
    "MultiMomentum",
    "NormalizeNeurons",
    "OptimisticAMSGrad",
    "Orthogonalize",
    "PSGDKronPrecondition",
    "PSGDLRAPrecondition",
    "ProjectRadial",
    "SPDPrecondition",
    "ScaleByAdam",
    "ScaleByCoshRms",
    "ScaleByLayerNoise",
    "ScaleByRms",
    "ScaleByShape",
    "ShampooPrecondition",
    "Transform",
    "TransformBase",
    "chain",
    "explain",
    "shape_factor",
]
