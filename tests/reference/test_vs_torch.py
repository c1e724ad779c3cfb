"""orthoptim against torch.optim (always installed) and the independent Keller Muon oracle.

Fixed gradient sequences, no backprop; parameters compared after every step. Measured max abs
parameter differences (torch 2.13.0 CPU, 25 steps, shapes as parametrised; re-measured by
``python -m pytest tests/reference/test_vs_torch.py -q -s`` which prints them):

| ours vs                         | dtype   | max abs diff  | why not zero                         |
|---------------------------------|---------|---------------|--------------------------------------|
| torch.optim.SGD(nesterov=True)  | f32/f64 | 0 (bitwise)   | same operations in the same order    |
| torch.optim.AdamW               | float64 | 3.1e-15       | decay folded into the update         |
| torch.optim.AdamW               | float32 | 4.1e-6        | same, at float32 round-off           |
| torch.optim.Muon (bf16 NS)      | float64 | 3.6e-15       | lr*scale*O vs lr*(scale*O + wd*p)    |
| torch.optim.Muon (bf16 NS)      | float32 | 4.3e-6        | same, at float32 round-off           |
| Keller oracle, NS in f64 / f32  | f64/f32 | 4.0e-15/3.8e-6 | fused addmm vs separate products    |
| Keller oracle, NS in bf16       | f64/f32 | 3.1e-3        | bf16 rounding of fused vs separate   |

Momentum buffers equal torch.optim.Muon's bit for bit: the EMA is the same ``lerp``.
"""

from __future__ import annotations

import pytest
import torch

import orthoptim
from tests.helpers import fixed_grads
from tests.reference.oracles import KellerMuon

STEPS = 25


def run_pair(shape, dtype, ours_factory, theirs_factory, steps=STEPS):
    """Step both optimizers on the same gradients; return (max param diff, ours, theirs, a, b)."""
    p0 = torch.randn(shape, dtype=dtype)
    a = p0.clone().requires_grad_()
    b = p0.clone().requires_grad_()
    ours, theirs = ours_factory([a]), theirs_factory([b])
    worst = 0.0
    for g in fixed_grads(shape, steps, dtype):
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        worst = max(worst, (a - b).abs().max().item())
    print(f"{shape} {dtype}: max abs diff {worst:.3g}")
    return worst, ours, theirs, a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(32, 16), (7,), (4, 3, 3, 3)])
@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_sgd_nesterov_equals_torch_bitwise(shape, dtype, momentum) -> None:
    worst, *_ = run_pair(
        shape,
        dtype,
        lambda ps: orthoptim.build("sgd", ps, lr=0.05, weight_decay=1e-3, momentum=momentum),
        lambda ps: torch.optim.SGD(
            ps, lr=0.05, momentum=momentum, nesterov=True, weight_decay=1e-3
        ),
    )
    assert worst == 0.0


def test_sgd_without_nesterov_equals_torch_bitwise() -> None:
    worst, *_ = run_pair(
        (16, 8),
        torch.float32,
        lambda ps: orthoptim.build("sgd", ps, lr=0.05, momentum=0.9, nesterov=False),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    )
    assert worst == 0.0


@pytest.mark.parametrize(
    ("dtype", "atol"),
    # Round-off of folding the decay into the update: ~10 ulp of |p| ~ 4 after 25 steps.
    [(torch.float64, 1e-14), (torch.float32, 5e-6)],
)
@pytest.mark.parametrize("shape", [(32, 16), (7,), (4, 3, 3, 3)])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.9, 0.95)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_equals_torch(shape, dtype, atol, betas, weight_decay) -> None:
    worst, ours, theirs, a, b = run_pair(
        shape,
        dtype,
        lambda ps: orthoptim.build("adamw", ps, lr=1e-2, weight_decay=weight_decay, betas=betas),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=weight_decay, betas=betas),
    )
    assert worst <= atol
    torch.testing.assert_close(ours.state[a]["adam.exp_avg"], theirs.state[b]["exp_avg"])
    torch.testing.assert_close(ours.state[a]["adam.exp_avg_sq"], theirs.state[b]["exp_avg_sq"])


@pytest.mark.parametrize(
    ("dtype", "atol"),
    # Both sides run the same bf16 Newton-Schulz on bit-identical momentum; what is left is the
    # order of the final float multiply-adds (decay folded into our update).
    [(torch.float64, 1e-13), (torch.float32, 1e-5)],
)
@pytest.mark.parametrize("shape", [(32, 16), (16, 48), (24, 24)])
@pytest.mark.parametrize(
    ("shape_scale", "adjust_lr_fn"), [("keller", "original"), ("moonlight_rms", "match_rms_adamw")]
)
@pytest.mark.parametrize("pre_norm", ["frobenius_clamp", "frobenius"])
def test_muon_equals_torch(shape, dtype, atol, shape_scale, adjust_lr_fn, pre_norm) -> None:
    worst, ours, theirs, a, b = run_pair(
        shape,
        dtype,
        lambda ps: orthoptim.build(
            "muon", ps, lr=0.02, weight_decay=0.1, shape_scale=shape_scale, pre_norm=pre_norm
        ),
        lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust_lr_fn),
    )
    # In bf16, ||X|| + 1e-7 rounds to ||X||, so Keller's "+eps" equals torch's clamp here.
    assert worst <= atol
    assert torch.equal(ours.state[a]["momentum.m"], theirs.state[b]["momentum_buffer"])


def test_muon_without_nesterov_equals_torch() -> None:
    worst, *_ = run_pair(
        (32, 16),
        torch.float64,
        lambda ps: orthoptim.build("muon", ps, lr=0.02, nesterov=False, momentum=0.9),
        lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0, nesterov=False, momentum=0.9),
    )
    assert worst <= 1e-13


@pytest.mark.parametrize("shape", [(32, 16), (16, 48), (24, 24), (8, 4, 3, 3)])
@pytest.mark.parametrize(
    ("dtype", "ns_dtype", "atol"),
    [
        # Same-precision Newton-Schulz: only fused-vs-separate products differ (round-off).
        (torch.float64, "float64", 1e-13),
        (torch.float32, "float32", 1e-5),
        # bf16 Newton-Schulz: bf16 (2^-8 relative) rounding of fused vs separate products,
        # bounded by steps * lr * 2% of a unit-RMS update.
        (torch.float64, "bfloat16", STEPS * 0.02 * 0.02),
        (torch.float32, "bfloat16", STEPS * 0.02 * 0.02),
    ],
)
def test_muon_equals_keller_oracle(shape, dtype, ns_dtype, atol) -> None:
    p0 = torch.randn(shape, dtype=dtype)
    a = p0.clone().requires_grad_()
    opt = orthoptim.build("muon", [a], lr=0.02, weight_decay=0.1, compute_dtype=ns_dtype)
    oracle = KellerMuon(
        p0, lr=0.02, weight_decay=0.1, beta=0.95, nesterov=True, ns_dtype=getattr(torch, ns_dtype)
    )
    worst = 0.0
    for g in fixed_grads(shape, STEPS, dtype):
        a.grad = g.clone()
        opt.step()
        worst = max(worst, (a - oracle.step(g)).abs().max().item())
    print(f"oracle {shape} {dtype} NS {ns_dtype}: max abs diff {worst:.3g}")
    assert worst <= atol


def test_muon_momentum_ema_equals_sum_after_orthogonalization() -> None:
    """With zero initial state, EMA momentum is (1 - beta) x summed momentum, and Newton-Schulz
    is scale invariant, so the trajectories agree up to the pre-normalisation eps."""
    from orthoptim.recipes import Plan
    from orthoptim.transforms import Momentum, Orthogonalize, ScaleByShape, chain

    def build(kind):
        c = chain(
            Momentum(beta=0.95, kind=kind, nesterov=True),
            # A negligible eps makes the pre-normalisation exactly scale invariant.
            Orthogonalize(compute_dtype="float64", eps=1e-30),
            ScaleByShape(),
        )
        return lambda ps: orthoptim.ChainOptimizer(ps, Plan.single(c), lr=0.02)

    worst, *_ = run_pair((32, 16), torch.float64, build("ema"), build("sum"))
    assert worst <= 1e-12
