"""NorMuon: oracle, reduction to Muon, neuron-normalisation properties, convergence.

The oracle follows ``normuon_update`` of zichongli5/NorMuon@d45c9a4280d758e2cf0b2b8333765d040e953937
(``normuon.py``) on 2-D parameters: EMA + Nesterov momentum, Keller's Newton-Schulz (separate
products, in the dtype asked for), ``v <- lerp(v, mean(U^2, dim=-1), 1 - beta2)``,
``U <- U / (sqrt(v) + 1e-10)`` rescaled to its old Frobenius norm (``+ 1e-10``), Keller's
``sqrt(max(1, rows/cols))``, then ``p <- p (1 - lr wd) - lr U``. Measured max abs parameter
difference over 25 steps (torch 2.13 CPU), printed by ``pytest -s``:

| parameters / Newton-Schulz | max abs diff | why not zero                                     |
|----------------------------|--------------|--------------------------------------------------|
| float64 / float64          | 3.1e-15      | fused ``addmm`` vs separate products, decay fold |
| float32 / float32          | 3.1e-6       | the same at float32 round-off (|p| ~ 4)          |
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import orthoptim
from orthoptim.functional.polar import polar_svd
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.neuronwise import NormalizeNeurons
from tests.helpers import fixed_grads
from tests.recipes.teacher_student import train
from tests.reference.oracles import keller_newton_schulz5

STEPS = 25


class NorMuonOracle:
    """One 2-D parameter updated by the reference's ``normuon_update`` rule, naively."""

    def __init__(
        self, p, *, lr, weight_decay, beta=0.95, beta2=0.95, ns_dtype=torch.float64, paper=False
    ):
        self.p, self.lr, self.wd, self.beta, self.beta2 = p.clone(), lr, weight_decay, beta, beta2
        self.paper = paper  # the paper's step size (Algorithm 1 line 10) for the code's
        self.m = torch.zeros_like(p)
        self.v = torch.zeros(p.shape[0], 1, dtype=p.dtype)
        self.ns_dtype = ns_dtype

    def step(self, g):
        self.m = self.beta * self.m + (1 - self.beta) * g
        u = (1 - self.beta) * g + self.beta * self.m
        u = keller_newton_schulz5(u, self.ns_dtype).to(self.p.dtype)
        norm_before = u.norm()
        self.v = self.beta2 * self.v + (1 - self.beta2) * (u * u).mean(dim=1, keepdim=True)
        u = u / (self.v.sqrt() + 1e-10)
        if self.paper:  # eta_hat = 0.2 eta sqrt(m n) / ||O||_F
            u = u * (0.2 * math.sqrt(u.shape[0] * u.shape[1]) / u.norm())
        else:
            u = u * (norm_before / (u.norm() + 1e-10))
            u = u * math.sqrt(max(1.0, u.shape[0] / u.shape[1]))
        self.p = self.p * (1 - self.lr * self.wd) - self.lr * u
        return self.p


@pytest.mark.parametrize("shape", [(32, 16), (16, 48), (24, 24)])
@pytest.mark.parametrize(
    ("dtype", "atol"),
    # Both sides run the same maths in the same precision; what differs is fused vs separate
    # products in Newton-Schulz and where the decay is folded in: round-off of |p| ~ 4.
    [(torch.float64, 1e-13), (torch.float32, 1e-5)],
)
def test_normuon_equals_reference_oracle(shape, dtype, atol) -> None:
    p0 = torch.randn(shape, dtype=dtype)
    a = p0.clone().requires_grad_()
    ns = "float64" if dtype == torch.float64 else "float32"
    opt = orthoptim.build("normuon", [a], lr=0.02, weight_decay=0.1, compute_dtype=ns)
    oracle = NorMuonOracle(p0, lr=0.02, weight_decay=0.1, ns_dtype=getattr(torch, ns))
    worst = 0.0
    for g in fixed_grads(shape, STEPS, dtype):
        a.grad = g.clone()
        opt.step()
        worst = max(worst, (a - oracle.step(g)).abs().max().item())
    print(f"normuon oracle {shape} {dtype}: max abs diff {worst:.3g}")
    assert worst <= atol
    torch.testing.assert_close(opt.state[a]["normuon.v_row"], oracle.v, rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape", [(32, 16), (16, 48)])
def test_the_papers_step_size_is_the_constant_rms_shape_scale(shape) -> None:
    """NorMuon's paper (Algorithm 1 line 10; zichongli5/NorMuon issues #6, #9): the normalised
    update is scaled to ``0.2 lr sqrt(m n) / ||O||_F``, i.e. RMS ``0.2 lr`` every step, not the
    code's re-norm and Keller factor. Oracle: the reference rule above with that step size.
    Measured max abs diff over 25 steps (float64): <= 8.9e-16."""
    p0 = torch.randn(shape, dtype=torch.float64)
    a = p0.clone().requires_grad_()
    options = dict(lr=0.02, weight_decay=0.1, compute_dtype="float64")
    opt = orthoptim.build("normuon", [a], shape_scale="constant_rms", **options)
    oracle = NorMuonOracle(p0, lr=0.02, weight_decay=0.1, paper=True)
    code = NorMuonOracle(p0, lr=0.02, weight_decay=0.1)
    worst = apart = 0.0
    for g in fixed_grads(shape, STEPS, torch.float64):
        a.grad = g.clone()
        before = a.detach().clone()
        opt.step()
        step = a.detach() - before * (1 - 0.02 * 0.1)
        assert math.isclose(step.norm().item(), 0.2 * 0.02 * math.sqrt(math.prod(shape)))
        worst = max(worst, (a - oracle.step(g)).abs().max().item())
        apart = max(apart, (a - code.step(g)).abs().max().item())
    print(f"normuon paper step size {shape}: max abs diff {worst:.3g} (code's rule: {apart:.3g})")
    assert worst <= 1e-13
    assert apart > 1e-3  # a different rule from the code's


def test_constant_rms_leaves_a_zero_update_zero() -> None:
    a = torch.ones(8, 4, requires_grad=True)
    opt = orthoptim.build("normuon", [a], shape_scale="constant_rms")
    a.grad = torch.zeros(8, 4)
    opt.step()
    assert torch.equal(a.detach(), torch.ones(8, 4))


def test_without_the_neuron_step_normuon_is_muon_bit_for_bit() -> None:
    shape = (24, 40)
    p0 = torch.randn(shape)
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    ours = orthoptim.build("normuon", [a], weight_decay=0.1, normalize_neurons=False)
    muon = orthoptim.build("muon", [b], weight_decay=0.1)
    assert repr(ours.plan) == repr(muon.plan)
    for g in fixed_grads(shape, 10, torch.float32):
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        muon.step()
        assert torch.equal(a, b)


def apply_neurons(t: NormalizeNeurons, u: torch.Tensor, steps: int = 1) -> torch.Tensor:
    state = t.init(u)
    c = Ctx(1, 0.1, 0.0, u, u)
    for _ in range(steps):
        out = t.apply(u.clone(), state, c)
    return out


def test_rows_of_equal_norm_pass_through() -> None:
    # The exact polar factor of a wide matrix has orthonormal rows: every row's second moment is
    # the same, so the division is by one scalar, which the Frobenius rescale undoes.
    # Only eps = 1e-10 is left: relative to the rescaled norm ||u / sqrt(v)||_F ~ 130 here.
    u = polar_svd(torch.randn(16, 48, dtype=torch.float64))
    for beta2 in (0.0, 0.95):
        out = apply_neurons(NormalizeNeurons(beta2=beta2), u, steps=3)
        assert (out - u).abs().max().item() < 1e-11


@given(
    rows=st.integers(1, 24),
    cols=st.integers(1, 24),
    log_scale=st.floats(-3, 6),
    beta2=st.sampled_from([0.0, 0.5, 0.95]),
    seed=st.integers(0, 2**16),
)
def test_frobenius_norm_is_kept_and_beta2_zero_equalises_rows(
    rows, cols, log_scale, beta2, seed
) -> None:
    # Entries of magnitude 0.5..1.5 times the scale, random signs: every row's RMS is at least
    # 5e-4, so eps = 1e-10 perturbs row norms by at most 2e-7 relative.
    g = torch.Generator().manual_seed(seed)
    magnitude = torch.rand(rows, cols, generator=g, dtype=torch.float64) + 0.5
    sign = torch.randint(0, 2, (rows, cols), generator=g) * 2 - 1
    u = magnitude * sign * 10.0**log_scale
    out = apply_neurons(NormalizeNeurons(beta2=beta2), u)
    torch.testing.assert_close(out.norm(), u.norm(), rtol=1e-9, atol=0)
    if beta2 == 0.0:
        row_norms = out.norm(dim=1)
        torch.testing.assert_close(row_norms, row_norms.mean().expand(rows), rtol=1e-6, atol=0)


def test_conv_neurons_are_output_channels_and_state_is_per_row() -> None:
    u = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    t = NormalizeNeurons(beta2=0.0)
    assert t.init(u)["v_row"].shape == (8, 1)
    out = apply_neurons(t, u)
    norms = out.reshape(8, -1).norm(dim=1)
    torch.testing.assert_close(norms, norms.mean().expand(8), rtol=1e-9, atol=0)


def test_v_row_is_float32_for_bfloat16_parameters() -> None:
    p = torch.zeros(4, 6, dtype=torch.bfloat16)
    assert NormalizeNeurons().init(p)["v_row"].dtype == torch.float32
    out = apply_neurons(NormalizeNeurons(), torch.randn(4, 6).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_vectors_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"NormalizeNeurons needs a matrix .* bias"):
        NormalizeNeurons().validate(torch.zeros(3), "bias")


def test_converges_on_teacher_student_at_the_default_lr() -> None:
    # Measured: relative loss 0.071 after 200 steps and 0.018 after 300 (muon: 0.069 / 0.017;
    # AdamW at 1e-3 0.20 / 0.18, SGD at 0.01 0.31 / 0.27).
    losses = train("normuon", 300)
    assert losses[199] < 0.1
    assert losses[-1] < 0.03
