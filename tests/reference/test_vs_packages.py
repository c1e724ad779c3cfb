"""orthoptim's ``muon`` against the Muon of the optional ``[reference]`` packages.

Each test feeds one fixed gradient sequence (no backprop) to ``orthoptim.build("muon", ...)``
configured to a package's conventions and to that package's ``Muon``, and compares the parameters
after every step and the momentum buffers. The conventions pinned per package are listed in
``tests/reference/README.md``.

Measured max abs differences over all steps (torch 2.13.0 CPU, heavyball 3.2.1,
pytorch-optimizer 4.1.0; 25 steps everywhere; initial p ~ N(0, 1), max |p| ~ 3.1-3.6;
lr = 2**-6, wd = 2**-7 where "wd"; re-measure with
``python -m pytest tests/reference/test_vs_packages.py -q -s``, which prints them):

| package           | dtype   | shape               | wd | params      | momentum    |
|-------------------|---------|---------------------|----|-------------|-------------|
| pytorch-optimizer | float64 | (32,16)             | 0  | 1.1e-16     | 0 (bitwise) |
| pytorch-optimizer | float64 | (16,48), (24,24)    | 0  | 0 (bitwise) | 0 (bitwise) |
| pytorch-optimizer | float32 | (32,16)             | 0  | 1.2e-7      | 0 (bitwise) |
| pytorch-optimizer | float32 | (16,48), (24,24)    | 0  | 0 (bitwise) | 0 (bitwise) |
| pytorch-optimizer | float64 | (32,16)             | wd | 2.0e-15     | 0 (bitwise) |
| pytorch-optimizer | float64 | (16,48)             | wd | 4.4e-16     | 0 (bitwise) |
| pytorch-optimizer | float64 | (24,24)             | wd | 2.2e-16     | 0 (bitwise) |
| pytorch-optimizer | float32 | (32,16)             | wd | 1.4e-6      | 0 (bitwise) |
| pytorch-optimizer | float32 | (16,48), (24,24)    | wd | 2.4e-7      | 0 (bitwise) |
| pytorch-optimizer | float64 | 5 mixed params      | wd | 2.2e-15     | 0 (bitwise) |
| pytorch-optimizer | float32 | 5 mixed params      | wd | 1.4e-6      | 0 (bitwise) |
| pytorch-optimizer | float64 | 4 params, moonlight | wd | 3.1e-15     | 0 (bitwise) |
| pytorch-optimizer | float32 | 4 params, moonlight | wd | 1.7e-6      | 0 (bitwise) |
| heavyball         | float64 | (32,16)             | 0  | 8.9e-16     | 2.8e-16     |
| heavyball         | float64 | (16,48)             | 0  | 4.4e-16     | 2.2e-16     |
| heavyball         | float64 | (24,24)             | 0  | 1.3e-15     | 1.7e-16     |
| heavyball         | float64 | (32,16)             | wd | 1.8e-15     | 2.8e-16     |
| heavyball         | float64 | (16,48)             | wd | 2.2e-15     | 2.2e-16     |
| heavyball         | float64 | (24,24)             | wd | 1.8e-15     | 1.7e-16     |
| heavyball         | float64 | 4 mixed params      | wd | 2.7e-15     | 3.3e-16     |
| heavyball         | float32 | (32,16)             | wd | 3.4e-3      | 1.5e-7      |
| heavyball         | float32 | (16,48)             | wd | 2.1e-3      | 1.5e-7      |
| heavyball         | float32 | (24,24)             | wd | 2.9e-3      | 1.2e-7      |

heavyball float32, in bfloat16 eps (2**-7): per-step update difference
``||u_ours - u_hb||_F / ||u_ours||_F`` 3.2 / 3.2 / 4.9; trajectory difference over
``steps * lr * max|u|`` 1.2 / 1.3 / 1.3. "5 mixed params" is (32,16), (16,48), (24,24) twice and
(32,16) again (foreach batched and not), "4 mixed params" the first four; "moonlight" is
(32,16), (16,32), (24,24), (16,48) with use_adjusted_lr / shape_scale="moonlight_rms".

Why the differences are what they are:

* pytorch-optimizer runs the same bfloat16 Newton-Schulz (Keller coefficients, clamped
  pre-norm computed in bfloat16, fused ``addmm``, round-to-nearest) on the same bits: its momentum
  is the same ``lerp``, so the orthogonalised updates are bit-identical every step. What remains is
  how each rounds ``p``: it decays ``p *= 1 - lr*wd`` and adds ``-lr*scale*O`` (two roundings of
  ``p``), we subtract ``lr*(scale*O + wd*p)`` (one). Hence at most ~1 ulp of ``|p|`` per step.
* heavyball (float64) runs its Newton-Schulz in float64 with separate products
  ``((c A + b I) A + a I) X`` instead of our fused ``addmm``; with lr and wd exactly representable
  in float32 (heavyball passes lr through a float32 tensor) the trajectories agree to round-off.
  Its momentum ``s = beta s + g`` is ours divided by ``1 - beta``, and the clamped pre-norm
  ``X / max(||X||_F, eps)`` is exactly scale-free once ``||X||_F > eps``.
* heavyball (float32) normalises in float32, stochastically rounds the Newton-Schulz input to
  bfloat16 (not switchable) and iterates in bfloat16 with separate products; we normalise and
  iterate in bfloat16 with round-to-nearest and fused ``addmm``. Only a bfloat16-sized agreement
  can be asserted; the float32 momentum buffers still agree to a few ulp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch

import orthoptim
from tests.helpers import fixed_grads

pytestmark = pytest.mark.reference

STEPS = 25
BETA = 0.95
# Powers of two: exactly representable in float32, so heavyball's float32 lr tensor, the decay
# factor 1 - lr*wd and our lr*wd are all exact and the comparison sees only the update's rounding.
LR = 2.0**-6
WD = 2.0**-7
SHAPES = [(32, 16), (16, 48), (24, 24)]
MIXED = [(32, 16), (16, 48), (24, 24), (24, 24), (32, 16)]
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7


@dataclass
class Stats:
    """Maxima over all steps and parameters of one paired run."""

    p_diff: float = 0.0  # max |p_ours - p_theirs|
    p_max: float = 0.0  # max |p|
    u_rel: float = 0.0  # max over steps of ||u_ours - u_theirs||_F / ||u_ours||_F
    u_max: float = 0.0  # max |u| (u = (p_{t-1} - p_t) / lr)
    m_diff: float = 0.0  # max |m_ours - m_theirs| (m_theirs in our convention)
    m_max: float = 0.0  # max |m_ours|
    m_bitwise: bool = True


MomentumOf = Callable[[torch.optim.Optimizer, torch.Tensor], torch.Tensor]


def run_pair(
    shapes: Sequence[tuple[int, ...]],
    dtype: torch.dtype,
    ours_factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    theirs_factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    theirs_momentum: MomentumOf,
    label: str,
    steps: int = STEPS,
) -> Stats:
    """Step both optimizers on the same gradients (separate clones: some packages write into
    ``p.grad``) and collect the per-step differences."""
    inits = [fixed_grads(s, 1, dtype, seed=100 + i)[0] for i, s in enumerate(shapes)]
    grads = [fixed_grads(s, steps, dtype, seed=1 + i) for i, s in enumerate(shapes)]
    ours_ps = [p.clone().requires_grad_() for p in inits]
    theirs_ps = [p.clone().requires_grad_() for p in inits]
    ours, theirs = ours_factory(ours_ps), theirs_factory(theirs_ps)
    st = Stats()
    for t in range(steps):
        before = [p.detach().clone() for p in ours_ps + theirs_ps]
        for a, b, g in zip(ours_ps, theirs_ps, grads, strict=True):
            a.grad, b.grad = g[t].clone(), g[t].clone()
        ours.step()
        theirs.step()
        n = len(ours_ps)
        for i, (a, b) in enumerate(zip(ours_ps, theirs_ps, strict=True)):
            a, b = a.detach(), b.detach()
            ua, ub = (before[i] - a) / LR, (before[n + i] - b) / LR
            st.p_diff = max(st.p_diff, (a - b).abs().max().item())
            st.p_max = max(st.p_max, a.abs().max().item())
            st.u_max = max(st.u_max, ua.abs().max().item())
            st.u_rel = max(st.u_rel, ((ua - ub).norm() / ua.norm()).item())
            ma, mb = ours.state[ours_ps[i]]["momentum.m"], theirs_momentum(theirs, theirs_ps[i])
            st.m_diff = max(st.m_diff, (ma - mb).abs().max().item())
            st.m_max = max(st.m_max, ma.abs().max().item())
            st.m_bitwise = st.m_bitwise and torch.equal(ma, mb)
    print(
        f"{label} {list(shapes)} {dtype}: params {st.p_diff:.3g} (|p| <= {st.p_max:.3g}), "
        f"momentum {st.m_diff:.3g}; in bf16 eps: step update rel {st.u_rel / BF16_EPS:.3g}, "
        f"trajectory/(steps lr max|u|) {st.p_diff / (steps * LR * st.u_max) / BF16_EPS:.3g}"
    )
    return st


def roundoff_bound(dtype: torch.dtype, magnitude: float, steps: int = STEPS) -> float:
    """Trajectories whose orthogonalised updates agree to round-off drift apart by at most ~1 ulp
    of |p| per step (each side rounds p once or twice a step); the drift adds up at worst
    linearly. Measured: 6-40x below this bound."""
    return steps * torch.finfo(dtype).eps * magnitude


def ours(ps, *, weight_decay, coeffs, compute_dtype, shape_scale) -> torch.optim.Optimizer:
    """orthoptim's Muon with the conventions both packages share (Nesterov EMA, 5 steps, clamp)."""
    return orthoptim.build(
        "muon",
        ps,
        lr=LR,
        weight_decay=weight_decay,
        momentum=BETA,
        nesterov=True,
        coeffs=coeffs,
        ns_steps=5,
        pre_norm="frobenius_clamp",
        compute_dtype=compute_dtype,
        shape_scale=shape_scale,
    )


# --------------------------------------------------------------------------------------------
# pytorch-optimizer 4.1.0: Muon(..., ns_coeffs="original")
# --------------------------------------------------------------------------------------------


def _po_momentum(opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor:
    return opt.state[p]["momentum_buffer"]  # same EMA convention as ours


def _po_pair(pytorch_optimizer, shapes, dtype, *, weight_decay, adjusted, foreach=None):
    return run_pair(
        shapes,
        dtype,
        lambda ps: ours(
            ps,
            weight_decay=weight_decay,
            coeffs="keller_quintic",
            compute_dtype="bfloat16",
            shape_scale="moonlight_rms" if adjusted else "keller",
        ),
        lambda ps: pytorch_optimizer.Muon(
            [dict(params=ps, use_muon=True)],
            lr=LR,
            momentum=BETA,
            weight_decay=weight_decay,
            nesterov=True,
            ns_steps=5,
            ns_coeffs="original",
            use_adjusted_lr=adjusted,
            foreach=foreach,
        ),
        _po_momentum,
        "pytorch-optimizer" + (" adjusted" if adjusted else ""),
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_decay", [0.0, WD])
def test_pytorch_optimizer_muon(pytorch_optimizer, shape, dtype, weight_decay) -> None:
    st = _po_pair(pytorch_optimizer, [shape], dtype, weight_decay=weight_decay, adjusted=False)
    # Same lerp on the same bits: the momentum buffers are identical, hence so are the bf16
    # Newton-Schulz inputs and outputs, every step.
    assert st.m_bitwise
    if weight_decay == 0.0 and shape[0] <= shape[1]:
        # Scale 1 and no decay: both do p.add_(O, alpha=-lr) on identical O.
        assert st.p_diff == 0.0
    else:
        # Scale sqrt(2) or decay: the only difference is how p is rounded (see module doc).
        assert st.p_diff <= roundoff_bound(dtype, st.p_max)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [None, False])
def test_pytorch_optimizer_muon_several_params(pytorch_optimizer, dtype, foreach) -> None:
    # foreach=None stacks equal shapes into one batched (baddbmm) Newton-Schulz; ours runs addmm
    # per matrix. Measured bit-identical on CPU either way.
    st = _po_pair(pytorch_optimizer, MIXED, dtype, weight_decay=WD, adjusted=False, foreach=foreach)
    assert st.m_bitwise
    assert st.p_diff <= roundoff_bound(dtype, st.p_max)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pytorch_optimizer_adjusted_lr_is_moonlight_rms(pytorch_optimizer, dtype) -> None:
    # use_adjusted_lr=True multiplies lr by 0.2 sqrt(max(rows, cols)) (decay keeps the plain lr),
    # which is our shape_scale="moonlight_rms" followed by decoupled decay. (32,16) and (16,32)
    # share one batch there (the factor is symmetric).
    shapes = [(32, 16), (16, 32), (24, 24), (16, 48)]
    st = _po_pair(pytorch_optimizer, shapes, dtype, weight_decay=WD, adjusted=True)
    assert st.m_bitwise
    assert st.p_diff <= roundoff_bound(dtype, st.p_max)


# --------------------------------------------------------------------------------------------
# heavyball 3.2.1: Muon(..., heavyball_momentum=True, nesterov=True)
# --------------------------------------------------------------------------------------------


def _hb_momentum(opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor:
    # heavyball keeps per-parameter state under an index, with a key named after the function
    # that owns it; s = beta s + g is our m / (1 - beta).
    (state,) = opt.state[p].values()
    (s,) = [v for k, v in state.items() if k.startswith("nesterov_momentum_momentum")]
    return (1 - BETA) * s


def _hb_pair(heavyball, shapes, dtype, *, weight_decay):
    f64 = dtype == torch.float64
    return run_pair(
        shapes,
        dtype,
        lambda ps: ours(
            ps,
            weight_decay=weight_decay,
            coeffs="you_quintic",
            # heavyball iterates float64 input in float64 and everything else in bfloat16.
            compute_dtype="float64" if f64 else "bfloat16",
            shape_scale="keller",
        ),
        lambda ps: heavyball.Muon(
            ps,
            lr=LR,
            betas=(BETA, 0.99),
            weight_decay=weight_decay,
            heavyball_momentum=True,
            nesterov=True,
            storage_dtype="float64" if f64 else "float32",
        ),
        _hb_momentum,
        "heavyball",
    )


def momentum_bound(dtype: torch.dtype, magnitude: float) -> float:
    """Ours (lerp) and heavyball's (s = beta s + g, then times 1 - beta here) round differently each
    step; older errors decay by beta per step, so the worst case is ~2 ulp / (1 - beta) = 40 ulp
    of max|m|. Measured <= 2.7 ulp; asserted 8 ulp."""
    return 8 * torch.finfo(dtype).eps * magnitude


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_decay", [0.0, WD])
def test_heavyball_muon_float64(heavyball, shape, weight_decay) -> None:
    st = _hb_pair(heavyball, [shape], torch.float64, weight_decay=weight_decay)
    assert st.m_diff <= momentum_bound(torch.float64, st.m_max)
    # Fused addmm vs separate products in float64: updates agree to ~1e-16 relative, which lr
    # shrinks far below an ulp of p; what remains is p's own rounding.
    assert st.p_diff <= roundoff_bound(torch.float64, st.p_max)


def test_heavyball_muon_float64_several_params(heavyball) -> None:
    st = _hb_pair(
        heavyball, [(32, 16), (16, 48), (24, 24), (32, 16)], torch.float64, weight_decay=WD
    )
    assert st.m_diff <= momentum_bound(torch.float64, st.m_max)
    assert st.p_diff <= roundoff_bound(torch.float64, st.p_max)


# heavyball rounds the Newton-Schulz input to bfloat16 stochastically (up to 1 bf16 eps per entry
# where round-to-nearest is within 1/2; drawn from torch's global generator, which conftest seeds)
# and iterates in bfloat16 with separate products. The five iterations amplify input error along
# small singular directions (slope ~4 per iteration near 0), most for square matrices. Per step,
# ||u_ours - u_hb||_F / ||u_ours||_F: measured <= 3.3 eps (rectangular) and <= 7 eps (square) over
# 4 seeds; asserted 16 eps. The per-step errors are independent (fresh rounding, new input) and do
# not add coherently: the trajectory difference measured <= 1.5 eps * steps * lr * max|u|;
# asserted 4 eps, plus float32 round-off of p.
BF16_STEP_REL = 16 * BF16_EPS
BF16_TRAJECTORY_REL = 4 * BF16_EPS


@pytest.mark.parametrize("shape", SHAPES)
def test_heavyball_muon_float32_bf16_bound(heavyball, shape) -> None:
    st = _hb_pair(heavyball, [shape], torch.float32, weight_decay=WD)
    # The momentum buffers are float32 on both sides and never see bfloat16: tight.
    assert st.m_diff <= momentum_bound(torch.float32, st.m_max)
    assert st.u_rel <= BF16_STEP_REL
    trajectory = STEPS * LR * BF16_TRAJECTORY_REL * st.u_max
    trajectory += roundoff_bound(torch.float32, st.p_max)
    assert st.p_diff <= trajectory
