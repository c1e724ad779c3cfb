"""SMB's model step: the closed form of ``functional.smb`` against the reference code's
coefficients and against a dense solve of the paper's model (float64), its degenerate blocks, and
the Armijo test."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from orthoptim.functional.smb import armijo_accepts, sgd_model_coefficients
from tests.reference.smb_oracles import model_minimiser, reference_model_step


def closed_form(g: Tensor, y: Tensor, lr: float, eta: float) -> Tensor:
    alpha, beta = sgd_model_coefficients(g.norm(), y.norm(), eta)
    return -lr * (alpha * g + beta * y)


Tensor = torch.Tensor


@settings(deadline=None, max_examples=60)
@given(
    n=st.integers(min_value=2, max_value=24),
    lr=st.floats(min_value=1e-3, max_value=10.0),
    eta=st.floats(min_value=0.05, max_value=0.999),
    y_scale=st.floats(min_value=0.0, max_value=100.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_closed_form_equals_reference_coefficients_and_the_model_minimiser(
    n: int, lr: float, eta: float, y_scale: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    y = y_scale * torch.randn(n, generator=gen, dtype=torch.float64)
    s = -lr * g
    ours = closed_form(g, y, lr, eta)
    torch.testing.assert_close(ours, reference_model_step(s, g, y, eta), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours, model_minimiser(s, g, y, eta), rtol=1e-8, atol=1e-12)


def test_model_step_without_curvature_is_eta_times_the_trial() -> None:
    g = torch.tensor([3.0, -4.0], dtype=torch.float64)
    torch.testing.assert_close(
        closed_form(g, torch.zeros(2, dtype=torch.float64), 0.5, 0.9),
        -0.5 * 0.9 * g,
        rtol=1e-15,
        atol=0,
    )


def test_model_step_of_a_block_without_gradient_is_zero_and_finite() -> None:
    zero = torch.zeros(5, dtype=torch.float64)
    y = torch.arange(5.0, dtype=torch.float64)
    for curvature in (zero, y):
        step = closed_form(zero, curvature, 0.1, 0.99)
        assert torch.equal(step, zero)
    alpha, beta = sgd_model_coefficients(torch.zeros(3), torch.zeros(3), 0.99)
    assert torch.equal(alpha, torch.zeros(3)) and torch.equal(beta, torch.zeros(3))


@pytest.mark.parametrize("curvature", [0.0, 1.0, 50.0, -50.0, -1e6])
def test_model_step_descends_and_is_at_most_one_and_a_half_eta_trials(curvature: float) -> None:
    # y along -g is the adversarial case for g.d; |d| <= t eta |g| (alpha <= eta, beta |y| <=
    # eta |g| / 2), so a large curvature can neither stop nor blow up the step.
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(40, generator=gen, dtype=torch.float64)
    y = curvature * (g + 0.3 * torch.randn(40, generator=gen, dtype=torch.float64))
    lr, eta = 0.7, 0.9
    step = closed_form(g, y, lr, eta)
    assert float(torch.dot(step, g)) < 0
    assert float(step.norm()) <= 1.5 * lr * eta * float(g.norm()) * (1 + 1e-12)


@pytest.mark.parametrize(
    ("trial_loss", "grad_norm", "kept"),
    [
        (0.94, 1.0, True),
        (0.96, 1.0, False),
        (float("nan"), 1.0, False),
        (2.0, 1e-9, True),
        (float("nan"), float("inf"), True),
    ],
)
def test_armijo_accepts(trial_loss: float, grad_norm: float, kept: bool) -> None:
    # threshold 1 - 0.1 * 0.5 = 0.95
    accepted = armijo_accepts(
        torch.tensor(1.0), torch.tensor(trial_loss), torch.tensor(0.5), torch.tensor(grad_norm), 0.1
    )
    assert accepted.dtype == torch.bool and bool(accepted) is kept
