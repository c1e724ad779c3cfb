"""Moment estimates: EMAs against their closed forms, bias correction, Adam's direction."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthoptim.functional.moments import adam_direction, bias_correction, ema_, ema_square_

BETAS = st.floats(0.0, 0.999)
SEEDS = st.integers(0, 2**32 - 1)


def sequence(seed: int, steps: int, shape: tuple[int, ...] = (3, 4)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(steps)]


def closed_form_ema(start: torch.Tensor, xs: list[torch.Tensor], beta: float) -> torch.Tensor:
    """``beta^t * start + (1 - beta) * sum_i beta^(t-1-i) * x_i``."""
    t = len(xs)
    total = beta**t * start
    for i, x in enumerate(xs):
        total = total + (1.0 - beta) * beta ** (t - 1 - i) * x
    return total


@given(beta=BETAS, seed=SEEDS, steps=st.integers(1, 20))
def test_ema_matches_closed_form(beta, seed, steps) -> None:
    start, *xs = sequence(seed, steps + 1)
    average = start.clone()
    for x in xs:
        assert ema_(average, x, beta) is average  # in place
    torch.testing.assert_close(average, closed_form_ema(start, xs, beta), rtol=1e-12, atol=1e-12)


@given(beta=BETAS, seed=SEEDS, steps=st.integers(1, 20))
def test_ema_square_matches_closed_form(beta, seed, steps) -> None:
    start, *xs = sequence(seed, steps + 1)
    start = start.abs()
    average = start.clone()
    for x in xs:
        assert ema_square_(average, x, beta) is average
    expected = closed_form_ema(start, [x * x for x in xs], beta)
    torch.testing.assert_close(average, expected, rtol=1e-12, atol=1e-12)


def test_ema_from_zero_weights_sum_to_bias_correction() -> None:
    # An EMA of ones started at zero holds exactly the weight it has put on its inputs.
    average = torch.zeros((), dtype=torch.float64)
    for step in range(1, 30):
        ema_(average, torch.ones((), dtype=torch.float64), 0.9)
        assert average.item() == pytest.approx(bias_correction(0.9, step), rel=1e-14)


@pytest.mark.parametrize(
    ("beta", "step", "expected"),
    [
        (0.9, 0, 0.0),
        (0.9, 1, 0.1),
        (0.9, 2, 0.19),
        (0.999, 1, 0.001),
        (0.999, 1000, 1.0 - 0.999**1000),
        (0.95, 10, 1.0 - 0.95**10),
        (0.0, 1, 1.0),
    ],
)
def test_bias_correction(beta, step, expected) -> None:
    assert bias_correction(beta, step) == pytest.approx(expected, rel=1e-14, abs=0.0)


@given(
    seed=SEEDS,
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    log_scale=st.floats(-3.0, 3.0),
)
def test_adam_first_step_has_unit_magnitude(seed, beta1, beta2, log_scale) -> None:
    # After one step m_hat = g and v_hat = g^2, so u = g / (|g| + eps) = sign(g) (1 - O(eps/|g|)).
    (g,) = sequence(seed, 1, (5, 6))
    g = g.sign() * (g.abs() + 0.1) * 10.0**log_scale  # |g| >= 1e-4
    exp_avg = ema_(torch.zeros_like(g), g, beta1)
    exp_avg_sq = ema_square_(torch.zeros_like(g), g, beta2)
    eps = 1e-12
    u = adam_direction(exp_avg, exp_avg_sq, step=1, betas=(beta1, beta2), eps=eps)
    torch.testing.assert_close(u, g.sign(), rtol=0, atol=1e-7)


@given(
    seed=SEEDS,
    steps=st.integers(1, 15),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
)
def test_adam_direction_matches_formula(seed, steps, beta1, beta2, eps) -> None:
    grads = sequence(seed, steps)
    exp_avg, exp_avg_sq = torch.zeros_like(grads[0]), torch.zeros_like(grads[0])
    m, v = torch.zeros_like(grads[0]), torch.zeros_like(grads[0])
    for g in grads:
        ema_(exp_avg, g, beta1)
        ema_square_(exp_avg_sq, g, beta2)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
    before = (exp_avg.clone(), exp_avg_sq.clone())
    u = adam_direction(exp_avg, exp_avg_sq, step=steps, betas=(beta1, beta2), eps=eps)
    m_hat = m / (1 - beta1**steps)
    v_hat = v / (1 - beta2**steps)
    expected = m_hat / (torch.sqrt(v_hat) + eps)
    torch.testing.assert_close(u, expected, rtol=1e-12, atol=1e-12)
    # A new tensor; the moments are left alone.
    assert torch.equal(exp_avg, before[0]) and torch.equal(exp_avg_sq, before[1])
    assert u.data_ptr() not in (exp_avg.data_ptr(), exp_avg_sq.data_ptr())


def test_adam_direction_single_known_value() -> None:
    # g = 2 for one step with betas (0.9, 0.999): m = 0.2, v = 0.004, u = 2 / (2 + eps).
    m = torch.tensor([0.2], dtype=torch.float64)
    v = torch.tensor([0.004], dtype=torch.float64)
    u = adam_direction(m, v, step=1, betas=(0.9, 0.999), eps=0.5)
    assert u.item() == pytest.approx(2.0 / (2.0 + 0.5), rel=1e-14)
