"""Muon's recipe: its chain and defaults, where each option lands, Nesterov against plain
momentum, the shape-scale conventions and the decay.

Steps against torch.optim.Muon and Keller Jordan's reference are in
``tests/reference/test_vs_torch.py``; this file checks the recipe itself.
"""

from __future__ import annotations

import math

import pytest
import torch

import orthoptim
from orthoptim.functional.polar import polar_svd
from orthoptim.recipes import muon
from orthoptim.transforms import AddWeightDecay, Ctx, Momentum, Orthogonalize, ScaleByShape

# Polar Express (paper) keeps every singular value within [0.98, 1.01] after its 8 steps, so in
# float64 the update is the exact polar factor to within 0.02 per entry.
NEAR_EXACT = {
    "coeffs": "polar_express_paper",
    "ns_steps": 8,
    "compute_dtype": "float64",
    "shape_scale": "none",
}


def updates(chain, grads, p, weight_decay=0.0):
    """The chain's update for each gradient of ``grads`` in turn, from fresh state."""
    state = chain.init(p)
    return [
        chain.apply(g.clone(), state, Ctx(i + 1, 0.02, weight_decay, p, g))
        for i, g in enumerate(grads)
    ]


def grads(shape, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


def test_chain_and_defaults() -> None:
    c = muon()
    assert c.transforms == (
        Momentum(beta=0.95, kind="ema", nesterov=True),
        Orthogonalize(
            coeffs="keller_quintic",
            ns_steps=5,
            pre_norm="frobenius",
            eps=1e-7,
            compute_dtype="bfloat16",
        ),
        ScaleByShape(rule="keller"),
        AddWeightDecay(),
    )
    assert c.core == (1, 3)  # momentum and decay run on shards, the rest on whole matrices
    assert c.moments == (0.95,)  # what a param group exposes as "momentum"


@pytest.mark.parametrize(
    ("option", "value", "index", "field"),
    [
        ("momentum", 0.9, 0, "beta"),
        ("nesterov", False, 0, "nesterov"),
        ("coeffs", "you_quintic", 1, "coeffs"),
        ("ns_steps", 3, 1, "ns_steps"),
        ("pre_norm", "frobenius_clamp", 1, "pre_norm"),
        ("eps", 1e-5, 1, "eps"),
        ("compute_dtype", "float32", 1, "compute_dtype"),
        ("shape_scale", "moonlight_rms", 2, "rule"),
        ("momentum_dtype", "float32", 0, "dtype"),
    ],
)
def test_each_option_sets_one_field(option, value, index, field) -> None:
    base, changed = muon(), muon(**{option: value})
    assert getattr(changed.transforms[index], field) == value
    others = [i for i in range(4) if i != index]
    assert [changed.transforms[i] for i in others] == [base.transforms[i] for i in others]


def test_registry_options_are_the_recipe_keywords() -> None:
    names = ["momentum", "nesterov", "momentum_dtype", "coeffs", "ns_steps", "pre_norm", "eps"]
    options = orthoptim.registry.get("muon").options()
    # then batch_by_shape and the AdamW route's (plan) options
    assert list(options)[:9] == [*names, "compute_dtype", "shape_scale"]


@pytest.mark.parametrize("nesterov", [True, False])
def test_orthogonalizes_the_nesterov_look_ahead_or_the_momentum(nesterov) -> None:
    beta = 0.95
    g1, g2 = grads((16, 8))
    u1, u2 = updates(muon(momentum=beta, nesterov=nesterov, **NEAR_EXACT), [g1, g2], g1 * 0)
    m1 = (1 - beta) * g1
    m2 = beta * m1 + (1 - beta) * g2
    look_ahead = g2 + beta * (m2 - g2)
    expected, other = (look_ahead, m2) if nesterov else (m2, look_ahead)
    assert (u2 - polar_svd(expected)).abs().max() < 0.02
    assert (u2 - polar_svd(other)).abs().max() > 0.1  # the two conventions are told apart
    # At the first step both directions are the gradient's (the polar factor ignores scale).
    assert (u1 - polar_svd(g1)).abs().max() < 0.02


@pytest.mark.parametrize(
    ("shape", "rows", "cols"), [((32, 16), 32, 16), ((16, 32), 16, 32), ((8, 4, 3, 3), 8, 36)]
)
@pytest.mark.parametrize("rule", ["keller", "moonlight_rms"])
def test_shape_scale_multiplies_the_orthogonalized_update(shape, rows, cols, rule) -> None:
    factor = {
        "keller": math.sqrt(max(1.0, rows / cols)),  # KellerJordan/Muon, torch "original"
        "moonlight_rms": 0.2 * math.sqrt(max(rows, cols)),  # Moonlight, "match_rms_adamw"
    }[rule]
    g = grads(shape, n=1)
    options = {**NEAR_EXACT, "shape_scale": "none"}
    (plain,) = updates(muon(**options), g, g[0] * 0)
    (scaled,) = updates(muon(**{**options, "shape_scale": rule}), g, g[0] * 0)
    torch.testing.assert_close(scaled, factor * plain, rtol=1e-14, atol=0)
    # a conv kernel is orthogonalised as its (out, in*kh*kw) matrix view
    torch.testing.assert_close(
        plain.reshape(rows, cols), polar_svd(g[0].reshape(rows, cols)), atol=0.02, rtol=0
    )


def test_decay_is_added_after_the_scale() -> None:
    g = grads((16, 8), n=3)
    p = torch.randn(16, 8, dtype=torch.float64)
    without = updates(muon(**NEAR_EXACT), g, p)
    with_decay = updates(muon(**NEAR_EXACT), g, p, weight_decay=0.1)
    for a, b in zip(without, with_decay, strict=True):
        torch.testing.assert_close(b, a + 0.1 * p, rtol=1e-14, atol=1e-15)


def test_muon_on_bare_vectors_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"ndim >= 2.*shape \(8,\)"):
        orthoptim.build("muon", [torch.zeros(8, requires_grad=True)])
