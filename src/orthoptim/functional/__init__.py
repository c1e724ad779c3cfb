"""Layer 1: pure tensor maths (no state, no optimizer)."""

from orthoptim.functional.coefficients import (
    COEFFICIENT_PRESETS,
    PRESETS,
    CoefficientPreset,
    get_preset,
)
from orthoptim.functional.moments import adam_direction, bias_correction, ema_, ema_square_
from orthoptim.functional.polar import PRE_NORMS, matrix_view, newton_schulz, polar_svd

__all__ = [
    "COEFFICIENT_PRESETS",
    "PRESETS",
    "PRE_NORMS",
    "CoefficientPreset",
    "adam_direction",
    "bias_correction",
    "ema_",
    "ema_square_",
    "get_preset",
    "matrix_view",
    "newton_schulz",
    "polar_svd",
]
