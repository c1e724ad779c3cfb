"""Unit and property tests of the transforms and of chain composition."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthoptim.transforms import (
    AddWeightDecay,
    Chain,
    Ctx,
    Momentum,
    Orthogonalize,
    ScaleByAdam,
    ScaleByShape,
    chain,
    explain,
    shape_factor,
)


def ctx(p: torch.Tensor, step: int = 1, weight_decay: float = 0.0) -> Ctx:
    return Ctx(step=step, lr=0.1, weight_decay=weight_decay, param=p, grad=torch.zeros_like(p))


def run(t, grads, p=None):
    p = torch.zeros_like(grads[0]) if p is None else p
    state = t.init(p)
    return [t.apply(g.clone(), state, ctx(p, i + 1)) for i, g in enumerate(grads)], state


def test_chain_of_nothing_is_the_identity() -> None:
    g = torch.randn(3, 4)
    (out,), state = run(chain(), [g])
    assert torch.equal(out, g) and state == {}


def test_nested_chains_flatten() -> None:
    a, b, c = Momentum(beta=0.5), Orthogonalize(), ScaleByShape()
    assert chain(a, chain(b, c)) == chain(a, b, c) == chain(chain(a, b), c)
    assert chain(a, chain(b, c)).transforms == (a, b, c)


def test_state_keys_are_namespaced_and_unique() -> None:
    c = chain(Momentum(beta=0.5), Momentum(beta=0.9), ScaleByAdam())
    state = c.init(torch.zeros(2))
    assert sorted(state) == ["adam.exp_avg", "adam.exp_avg_sq", "momentum#2.m", "momentum.m"]


def test_chain_rejects_non_transforms() -> None:
    with pytest.raises(TypeError, match="chain\\(\\) takes transforms"):
        Chain((lambda u: u,))  # type: ignore[arg-type]


def test_transforms_are_frozen() -> None:
    m = Momentum(beta=0.5)
    with pytest.raises(AttributeError):
        m.beta = 0.9  # type: ignore[misc]


def test_two_momentums_in_one_chain_compose() -> None:
    g = [torch.ones(3)] * 3
    outs, state = run(chain(Momentum(beta=0.5, kind="sum"), Momentum(beta=0.5, kind="sum")), g)
    # first: m1 = 1, 1.5, 1.75; second accumulates those: 1, 2, 2.75
    torch.testing.assert_close(outs[-1], torch.full((3,), 2.75))
    torch.testing.assert_close(state["momentum.m"], torch.full((3,), 1.75))


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=6))
def test_momentum_with_beta_zero_is_the_identity(values) -> None:
    grads = [torch.tensor([v], dtype=torch.float64) for v in values]
    for kind in ("ema", "sum"):
        for nesterov in (False, True):
            outs, _ = run(Momentum(beta=0.0, kind=kind, nesterov=nesterov), grads)
            for o, g in zip(outs, grads, strict=True):
                assert torch.equal(o, g)


@given(st.floats(0.0, 0.99), st.floats(-5, 5))
def test_ema_momentum_converges_to_a_constant_gradient(beta, value) -> None:
    grads = [torch.tensor([value], dtype=torch.float64)] * 2000
    outs, _ = run(Momentum(beta=beta, kind="ema"), grads)
    assert outs[-1].item() == pytest.approx(value, abs=1e-6 * (1 + abs(value)))


@given(st.floats(0.0, 0.99), st.booleans())
def test_ema_is_one_minus_beta_times_sum(beta, nesterov) -> None:
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(6)]
    ema, _ = run(Momentum(beta=beta, kind="ema", nesterov=nesterov), grads)
    total, _ = run(Momentum(beta=beta, kind="sum", nesterov=nesterov), grads)
    # Nesterov: (1-b) g + b m_ema = (1-b) g + b (1-b) m_sum = (1-b) (g + b m_sum).
    for e, s in zip(ema, total, strict=True):
        torch.testing.assert_close(e, (1 - beta) * s)


def test_scale_by_adam_first_step_has_unit_magnitude() -> None:
    g = torch.randn(100, dtype=torch.float64) * 1e-3
    (out,), _ = run(ScaleByAdam(eps=1e-12), [g])
    torch.testing.assert_close(out.abs(), torch.ones(100, dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("rule", "shape", "expected"),
    [
        ("keller", (64, 16), 2.0),
        ("keller", (16, 64), 1.0),
        ("keller", (8, 2, 3, 3), 1.0),  # matrix view 8x18 is wide
        ("keller", (72, 2, 3, 3), 2.0),
        ("moonlight_rms", (16, 64), 0.2 * 8),
        ("none", (16, 64), 1.0),
    ],
)
def test_scale_by_shape_rules(rule, shape, expected) -> None:
    u = torch.ones(shape)
    (out,), _ = run(ScaleByShape(rule=rule), [u])
    torch.testing.assert_close(out, torch.full(shape, expected))
    rows = shape[0]
    assert shape_factor(rule, rows, u.numel() // rows) == pytest.approx(expected)


def test_add_weight_decay_uses_the_group_value() -> None:
    p = torch.full((3,), 2.0)
    t = AddWeightDecay()
    out = t.apply(torch.ones(3), {}, ctx(p, weight_decay=0.5))
    torch.testing.assert_close(out, torch.full((3,), 2.0))


def test_orthogonalize_flattens_conv_kernels_and_keeps_dtype() -> None:
    u = torch.randn(8, 2, 3, 3)
    out = Orthogonalize(compute_dtype="float64", ns_steps=12, coeffs="polar_express_paper").apply(
        u.clone(), {}, ctx(u)
    )
    assert out.shape == u.shape and out.dtype == u.dtype
    m = out.reshape(8, 18)
    torch.testing.assert_close(m @ m.T, torch.eye(8), atol=2e-2, rtol=0)


def test_orthogonalize_validates_shapes() -> None:
    with pytest.raises(ValueError, match="needs a matrix"):
        Orthogonalize().validate(torch.zeros(5), "bias")
    with pytest.raises(ValueError, match="needs a matrix"):
        ScaleByShape().validate(torch.zeros(5), "bias")
    ScaleByShape(rule="none").validate(torch.zeros(5), "bias")


def test_explain_numbers_each_transform() -> None:
    text = explain(chain(Momentum(), Orthogonalize()))
    assert text.splitlines()[0].startswith("1. Momentum:")
    assert text.splitlines()[1].startswith("2. Orthogonalize:")
    assert "theta" in text.splitlines()[-1]
