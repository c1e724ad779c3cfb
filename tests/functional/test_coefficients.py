"""Coefficient presets: measured singular-value bands, schedules, the published numbers.

The band inputs are the float32 measurement described in ``orthoptim.functional.coefficients``
(log-spaced spectra from 1 to 1e-3 at every shape, Gaussian inputs at the non-square shapes,
seeds 0 to 4); re-measuring all of them takes well under a second.
"""

from __future__ import annotations

import math

import pytest
import torch

from orthoptim.functional.coefficients import COEFFICIENT_PRESETS, PRESETS, get_preset
from orthoptim.functional.polar import newton_schulz

SHAPES = ((64, 64), (128, 128), (64, 256), (256, 64), (128, 512))
RECTANGULAR = tuple(shape for shape in SHAPES if shape[0] != shape[1])
SEEDS = (0, 1, 2, 3, 4)
# The band's domain: sigma_min(X) / ||X||_F at least this (module docstring).
MIN_RATIO = 3.2e-4


def log_spaced(m: int, n: int, seed: int, lowest: float = 1e-3) -> torch.Tensor:
    """``U diag(s) V^T`` with ``s`` log-spaced from 1 to ``lowest``, random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, math.log10(lowest), k, dtype=torch.float64)
    return (U * s) @ V.T


def gaussian(m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64)


def band_inputs() -> list[tuple[str, torch.Tensor]]:
    inputs = [(f"logspace {m}x{n} seed {s}", log_spaced(m, n, s)) for m, n in SHAPES for s in SEEDS]
    inputs += [
        (f"gaussian {m}x{n} seed {s}", gaussian(m, n, s)) for m, n in RECTANGULAR for s in SEEDS
    ]
    return inputs


BAND_INPUTS = band_inputs()


def output_svdvals(x: torch.Tensor, name: str, steps: int | None = None) -> torch.Tensor:
    """Singular values of the float32 Newton-Schulz output of ``x`` under preset ``name``."""
    preset = PRESETS[name]
    steps = preset.default_steps if steps is None else steps
    y = newton_schulz(x.to(torch.float32), preset.schedule(steps), norm_safety=preset.norm_safety)
    return torch.linalg.svdvals(y.to(torch.float64))


def test_band_inputs_are_in_the_stated_domain() -> None:
    for label, x in BAND_INPUTS:
        s = torch.linalg.svdvals(x)
        assert s[-1] / torch.linalg.vector_norm(x) >= MIN_RATIO, label


@pytest.mark.parametrize("name", COEFFICIENT_PRESETS)
def test_singular_values_stay_in_band(name: str) -> None:
    lo, hi = PRESETS[name].band
    for label, x in BAND_INPUTS:
        s = output_svdvals(x, name)
        assert lo <= s.min().item() and s.max().item() <= hi, (label, s.min(), s.max())


@pytest.mark.parametrize("name", COEFFICIENT_PRESETS)
def test_band_holds_on_whole_domain_in_exact_arithmetic(name: str) -> None:
    # Newton-Schulz maps each pre-normalised singular value x = s / (safety * ||X||_F) through the
    # composed scalar polynomial, so the band must contain that polynomial's range over
    # [MIN_RATIO, 1] / safety, not just the values the sampled matrices happen to hit.
    preset = PRESETS[name]
    x = torch.logspace(math.log10(MIN_RATIO), 0, 100_001, dtype=torch.float64)
    x = x / preset.norm_safety
    for a, b, c in preset.schedule(preset.default_steps):
        x = a * x + b * x**3 + c * x**5
    lo, hi = preset.band
    assert lo <= x.min().item() and x.max().item() <= hi


def test_schedule_repeats_last_triple() -> None:
    for preset in PRESETS.values():
        n = len(preset.triples)
        assert preset.schedule(n) == preset.triples
        assert preset.schedule(1) == preset.triples[:1]
        longer = preset.schedule(n + 3)
        assert len(longer) == n + 3
        assert longer[:n] == preset.triples
        assert longer[n:] == (preset.triples[-1],) * 3


@pytest.mark.parametrize("steps", [0, -1])
def test_schedule_rejects_fewer_than_one_step(steps: int) -> None:
    with pytest.raises(ValueError, match="ns_steps"):
        PRESETS["keller_quintic"].schedule(steps)


def test_get_preset() -> None:
    for name in COEFFICIENT_PRESETS:
        assert get_preset(name) is PRESETS[name]
    with pytest.raises(ValueError, match="no_such_preset") as info:
        get_preset("no_such_preset")
    for name in COEFFICIENT_PRESETS:
        assert name in str(info.value)


def test_polar_express_paper_numbers() -> None:
    # Amsel et al., Algorithm 1: raw first triple, safety 1.01 on all but the last polynomial.
    preset = PRESETS["polar_express_paper"]
    a, b, c = 8.28721201814563, -23.595886519098837, 17.300387312530933
    assert preset.triples[0] == (a / 1.01, b / 1.01**3, c / 1.01**5)
    assert preset.triples[-1] == (1.875, -1.25, 0.375)
    assert len(preset.triples) == preset.default_steps == 8
    assert preset.norm_safety == 1.01


@pytest.mark.parametrize("name", ["polar_express_paper", "polar_express_modded_nanogpt"])
def test_polar_express_beats_keller_on_ill_conditioned_inputs(name: str) -> None:
    # The paper's claim: at the same number of steps, a larger smallest singular value.
    for m, n in ((128, 128), (64, 256)):
        x = log_spaced(m, n, seed=0)
        keller = output_svdvals(x, "keller_quintic", steps=5).min().item()
        polar = output_svdvals(x, name, steps=5).min().item()
        # Measured at 128x128: keller 0.155, paper 0.306, modded-nanogpt 0.307.
        assert polar > 1.5 * keller, (m, n, keller, polar)
