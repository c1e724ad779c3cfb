"""AuON and Hybrid-AuON: oracles, reductions, the cosh-RMS bounds, step size vs Muon, convergence.

The oracles follow ryyzn9/AuON@bba2e82200825bbf8574462df32130af64a39f42 ``auon/optimizer.py``
(``AuON.step`` and ``HybridAuON.step``) and the paper's §3.1 equations (arXiv 2509.24320v1):

    p <- p (1 - lr wd);  m <- lerp(m, g, 1 - beta);  G <- lerp(g, m, beta)      (Nesterov)
    Hybrid only: X = G/(||G||_F + 1e-7) (transposed when tall), k x [A = X X^T;
                 X <- a X + (b A + c A A) X], G <- X
    r = sqrt(mean(cosh(gamma G/(||G||_F + 1e-7))^2))
    code:  p <- p - lr G / (r + 1e-8)
    paper: p <- p - lr (G/(||G||_F + 1e-7)) / (r + 1e-8)         (the paper's gamma is 1)

Measured max abs parameter differences over 25 steps, float64 (torch 2.13 CPU), printed by
``pytest -s``: AuON, paper and code forms, at most 2.4e-15; Hybrid, 1 and 5 steps, at most 2.7e-15
(|p| ~ 4). What is left is the order of the final multiply-adds (decay folded into the update)
and, for Hybrid, fused ``addmm`` against separate products.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import orthoptim
from orthoptim.transforms.auon import ScaleByCoshRms
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.orthogonalize import Orthogonalize
from orthoptim.transforms.scaling import ScaleByShape
from tests.helpers import fixed_grads
from tests.recipes.teacher_student import train

STEPS = 25
KELLER = (3.4445, -4.7750, 2.0315)


class AuonOracle:
    """One parameter updated by the reference's AuON / HybridAuON step, naively."""

    def __init__(self, p, *, lr, wd, beta=0.95, gamma=1.5, normalize=False, ns_steps=0):
        self.p, self.m = p.clone(), torch.zeros_like(p)
        self.lr, self.wd, self.beta, self.gamma = lr, wd, beta, gamma
        self.normalize, self.ns_steps = normalize, ns_steps

    def newton_schulz(self, G):
        a, b, c = KELLER
        X = G.T if G.shape[0] > G.shape[1] else G
        X = X / (X.norm() + 1e-7)
        for _ in range(self.ns_steps):
            A = X @ X.T
            B = b * A + c * (A @ A)
            X = a * X + B @ X
        return X.T if G.shape[0] > G.shape[1] else X

    def step(self, g):
        self.p = self.p * (1 - self.lr * self.wd)
        self.m = self.m + (1 - self.beta) * (g - self.m)
        G = g + self.beta * (self.m - g)
        if self.ns_steps:
            G = self.newton_schulz(G)
        direction = G / (G.norm() + 1e-7)
        r = torch.sqrt(torch.mean(torch.cosh(direction * self.gamma) ** 2))
        self.p = self.p - self.lr * (direction if self.normalize else G) / (r + 1e-8)
        return self.p


def run_against(oracle, opt, a, shape):
    worst = 0.0
    for g in fixed_grads(shape, STEPS, torch.float64):
        a.grad = g.clone()
        opt.step()
        worst = max(worst, (a - oracle.step(g)).abs().max().item())
    return worst


@pytest.mark.parametrize("shape", [(32, 16), (16, 48), (4, 3, 3, 3)])
@pytest.mark.parametrize(
    ("normalize", "gamma"),
    [(True, 1.0), (True, 1.5), (False, 1.5)],
    ids=["paper", "paper-g", "code"],
)
def test_auon_equals_oracle(shape, normalize, gamma) -> None:
    p0 = torch.randn(shape, dtype=torch.float64)
    a = p0.clone().requires_grad_()
    opt = orthoptim.build("auon", [a], lr=0.2, weight_decay=0.1, gamma=gamma, normalize=normalize)
    oracle = AuonOracle(p0, lr=0.2, wd=0.1, gamma=gamma, normalize=normalize)
    worst = run_against(oracle, opt, a, shape)
    print(f"auon oracle {shape} normalize={normalize} gamma={gamma}: max abs diff {worst:.3g}")
    assert worst <= 1e-14  # float64 round-off of |p| ~ 4


@pytest.mark.parametrize("shape", [(32, 16), (16, 48), (24, 24)])
@pytest.mark.parametrize("ns_steps", [1, 5])
def test_hybrid_auon_equals_oracle(shape, ns_steps) -> None:
    p0 = torch.randn(shape, dtype=torch.float64)
    a = p0.clone().requires_grad_()
    opt = orthoptim.build(
        "hybrid_auon", [a], lr=0.1, weight_decay=0.1, ns_steps=ns_steps, compute_dtype="float64"
    )
    oracle = AuonOracle(p0, lr=0.1, wd=0.1, ns_steps=ns_steps)
    worst = run_against(oracle, opt, a, shape)
    print(f"hybrid_auon oracle {shape} ns_steps={ns_steps}: max abs diff {worst:.3g}")
    assert worst <= 1e-13  # plus fused vs separate products in Newton-Schulz


def test_reference_code_form_without_cosh_is_nesterov_sgd() -> None:
    # gamma = 0 makes r = 1: the code's update is then the Nesterov EMA momentum divided by
    # (1 + 1e-8), i.e. torch's summed Nesterov momentum times (1 - beta) / (1 + 1e-8).
    shape, beta, lr = (16, 24), 0.95, 0.2
    p0 = torch.randn(shape, dtype=torch.float64)
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    ours = orthoptim.build("auon", [a], lr=lr, gamma=0.0, normalize=False, momentum=beta)
    sgd = torch.optim.SGD([b], lr=lr * (1 - beta) / (1 + 1e-8), momentum=beta, nesterov=True)
    for g in fixed_grads(shape, STEPS, torch.float64):
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        sgd.step()
    assert (a - b).abs().max().item() <= 1e-14


def brake(u, *, gamma=1.5, normalize=True):
    return ScaleByCoshRms(gamma=gamma, normalize=normalize).apply(u.clone(), {}, Ctx(1, 1, 0, u, u))


def test_hybrid_with_prenormalisation_in_place_of_newton_schulz_is_auon() -> None:
    # AuON (paper) = the Hybrid brake applied to u/(||u|| + 1e-7), the input Newton-Schulz sees.
    u = torch.randn(12, 20, dtype=torch.float64) * 3
    # The brake renormalises its input (||x|| = 1 - 1e-7/||u||): r moves by ~1e-7 gamma^2 / N.
    hybrid_without_ns = brake(u / (u.norm() + 1e-7), normalize=False)
    torch.testing.assert_close(hybrid_without_ns, brake(u), rtol=1e-9, atol=0)


@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    log_scale=st.floats(-20, 20),
    spike=st.floats(0, 1e4),
    gamma=st.sampled_from([0.0, 1.0, 1.5, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_brake_bounds_and_invariances(rows, cols, log_scale, spike, gamma, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    u[0, 0] += spike  # heavy tails: the case the brake is for
    u *= 10.0**log_scale
    out = brake(u, gamma=gamma)
    n, norm = rows * cols, u.norm().item()
    # Jensen bounds of ScaleByCoshRms on the unit-norm direction: cosh(gamma/sqrt(N)) <= r <=
    # sqrt(1 + sinh(gamma)^2 / N); the direction's norm is ||u|| / (||u|| + 1e-7), not 1, for
    # tiny ||u|| (the reference's eps, like Newton-Schulz's pre-normalisation).
    shrink = norm / (norm + 1e-7)
    lower = shrink / (math.sqrt(1 + math.sinh(shrink * gamma) ** 2 / n) + 1e-8)
    upper = shrink / (math.cosh(shrink * gamma / math.sqrt(n)) + 1e-8)
    frobenius = out.norm().item()
    assert lower * (1 - 1e-9) <= frobenius <= upper * (1 + 1e-9)
    assert torch.linalg.matrix_norm(out, ord=2).item() <= frobenius * (1 + 1e-12) <= 1 + 1e-9
    # A positive multiple of the input: signs and ratios kept.
    ratio = (out.norm() / u.norm()).item()
    torch.testing.assert_close(out, u * ratio, rtol=1e-12, atol=0)
    # Scale invariance (paper form), up to the eps.
    rtol = 1e-12 + 2e-7 / norm
    torch.testing.assert_close(brake(u * 7.0, gamma=gamma), out, rtol=rtol, atol=0)


def test_zero_update_stays_zero_in_every_dtype() -> None:
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        for normalize in (True, False):
            out = brake(torch.zeros(3, 4, dtype=dtype), normalize=normalize)
            assert out.dtype == dtype and torch.equal(out, torch.zeros(3, 4, dtype=dtype))


def update_norms(kind: str, m: torch.Tensor) -> tuple[float, float]:
    """Frobenius and spectral norm of one step's update from momentum ``m`` (float32)."""
    c = Ctx(1, 1.0, 0.0, m, m)
    u = m.clone()
    if kind == "auon":
        u = brake(u)
    elif kind == "hybrid_auon":
        u = Orthogonalize(ns_steps=1, compute_dtype="float32").apply(u, {}, c)
        u = brake(u, normalize=False)
    else:
        u = Orthogonalize(compute_dtype="float32").apply(u, {}, c)
        u = ScaleByShape(rule="keller").apply(u, {}, c)
    u = u.double()
    return u.norm().item(), torch.linalg.matrix_norm(u, ord=2).item()


@pytest.mark.parametrize("shape", [(64, 64), (256, 256), (64, 256), (256, 64)])
def test_step_size_relative_to_muon_on_gaussian_momenta(shape) -> None:
    # Documented in recipes.auon: AuON's Frobenius step is 1, Muon's ~0.9 sqrt(rows); measured
    # muon/auon = 7.0 (64x64), 14.4 (256x256), 7.4 (64x256), 14.2 (256x64); Hybrid/AuON = 3.3-3.4.
    m = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    auon_f, auon_s = update_norms("auon", m)
    muon_f, _ = update_norms("muon", m)
    hybrid_f, _ = update_norms("hybrid_auon", m)
    assert abs(auon_f - 1) < 1e-3
    assert 0.8 * math.sqrt(shape[0]) <= muon_f / auon_f <= 1.0 * math.sqrt(shape[0])
    assert 3.2 <= hybrid_f / auon_f <= 3.5
    assert auon_s <= 0.25  # isotropic noise: sigma_max/||M||_F ~ 1/sqrt(min) + 1/sqrt(max)


def test_step_size_relative_to_muon_on_low_rank_momenta() -> None:
    # Momenta of real training have stable rank ~1-3 (measured on the lm and digits race tasks
    # after 30 Muon steps: AuON's spectral norm 0.4-0.98, Muon's 1.1-2.4 with the shape factor).
    # Rank one plus 10% noise: AuON's spectral step is close to Muon's.
    g = torch.Generator().manual_seed(0)
    m = torch.outer(torch.randn(128, generator=g), torch.randn(128, generator=g))
    m += 0.1 * m.norm() / 128 * torch.randn(128, 128, generator=g)
    auon_f, auon_s = update_norms("auon", m)
    _, muon_s = update_norms("muon", m)
    hybrid_f, _ = update_norms("hybrid_auon", m)
    assert auon_s >= 0.9 and muon_s <= 1.25
    assert hybrid_f / auon_f < 1.5  # one dominant direction: s ~ 1 maps to ~0.7


def test_auon_converges_on_teacher_student_at_the_default_lr() -> None:
    # Measured at lr 0.1 (default): relative loss 0.053 after 200 steps, 0.014 after 300
    # (muon at 0.02: 0.069 / 0.017; AdamW at 1e-3: 0.20 / 0.18).
    losses = train("auon", 300)
    assert losses[199] < 0.08
    assert losses[-1] < 0.025


def test_hybrid_auon_converges_on_teacher_student_at_the_default_lr() -> None:
    # Measured at lr 0.05 (default): relative loss 0.026 after 200 steps, 0.0055 after 300.
    losses = train("hybrid_auon", 300)
    assert losses[199] < 0.04
    assert losses[-1] < 0.01
