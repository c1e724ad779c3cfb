"""MarsCorrection (transforms/variance.py) and LionSign (transforms/sign.py) as units."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthoptim.transforms.base import Ctx
from orthoptim.transforms.chain import chain
from orthoptim.transforms.sign import LionSign
from orthoptim.transforms.variance import MarsCorrection


def run(t, grads, *, param=None, at_previous=None):
    """Apply ``t`` to each gradient in turn (a fresh working copy each step); the outputs."""
    param = torch.zeros_like(grads[0]) if param is None else param
    s = t.init(param)
    out = []
    for step, g in enumerate(grads, 1):
        prev = None if at_previous is None else at_previous[step - 1]
        c = Ctx(step, 0.1, 0.0, param, g, "w", prev)
        out.append(t.apply(g.clone(), s, c))
    return out, s


def test_approximate_correction_and_clip_by_hand() -> None:
    t = MarsCorrection(gamma=0.5, beta1=0.5, clip=10.0)  # scale gamma b1/(1-b1) = 0.5
    g1, g2 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    (c1, c2), s = run(t, [g1, g2])
    assert torch.equal(c1, torch.tensor([1.5, 3.0]))  # against g_prev = 0
    assert torch.equal(c2, torch.tensor([4.0, -2.5]))  # g2 + 0.5 (g2 - g1)
    assert torch.equal(s["prev_grad"], g2)
    (c,), _ = run(MarsCorrection(gamma=0.5, beta1=0.5, clip=1.0), [torch.tensor([3.0, 4.0])])
    assert torch.allclose(c, torch.tensor([0.6, 0.8]))  # (4.5, 6) has norm 7.5 > 1: unit norm


def test_first_step_uncorrected_is_the_papers_x0_equals_x1() -> None:
    g = torch.tensor([3.0, 4.0])
    (c,), _ = run(MarsCorrection(gamma=0.5, beta1=0.5, clip=None, first_step="uncorrected"), [g])
    assert torch.equal(c, g)


def test_prev_grad_is_a_copy_not_an_alias() -> None:
    # The reference stores p.grad itself; zeroing the gradient in place then cancels the
    # correction. Ours must not change when the gradient tensor is reused.
    t = MarsCorrection(gamma=0.5, beta1=0.5, clip=None)
    p, g = torch.zeros(3), torch.ones(3)
    s = t.init(p)
    t.apply(g.clone(), s, Ctx(1, 0.1, 0.0, p, g))
    g.zero_()
    assert torch.equal(s["prev_grad"], torch.ones(3))
    assert s["prev_grad"].data_ptr() != g.data_ptr()


def test_exact_uses_the_gradient_at_the_previous_point_and_records_the_point() -> None:
    t = MarsCorrection(gamma=0.5, beta1=0.5, clip=None, variant="exact")
    assert t.needs_closure and not MarsCorrection().needs_closure
    p = torch.tensor([1.0, 1.0])
    g1, g2, h2 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.0])
    (c1, c2), s = run(t, [g1, g2], param=p, at_previous=[None, h2])
    assert torch.equal(c1, torch.tensor([1.5, 3.0]))
    assert torch.equal(c2, torch.tensor([3.5, -1.5]))  # g2 + 0.5 (g2 - h2), not (g2 - g1)
    assert torch.equal(s["prev_param"], p) and "prev_grad" not in s


def test_exact_without_the_previous_gradient_raises_before_changing_state() -> None:
    t = MarsCorrection(variant="exact")
    p = torch.ones(2)
    s = t.init(p)
    t.apply(torch.ones(2), s, Ctx(1, 0.1, 0.0, p, torch.ones(2)))
    before = s["prev_param"].clone()
    with pytest.raises(RuntimeError, match="step\\(closure\\)"):
        t.apply(torch.ones(2), s, Ctx(2, 0.1, 0.0, p + 1, torch.ones(2)))
    assert torch.equal(s["prev_param"], before)


@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    exponent=st.sampled_from([-30, -3, 0, 5, 15]),
    seed=st.integers(0, 2**16),
)
def test_gamma_zero_without_clip_is_the_identity_and_the_clip_bounds_the_norm(
    rows, cols, exponent, seed
) -> None:
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(rows, cols, generator=gen) * 10.0**exponent for _ in range(3)]
    outs, _ = run(MarsCorrection(gamma=0.0, clip=None), grads)
    for g, u in zip(grads, outs, strict=True):
        assert torch.equal(u, g)
    outs, _ = run(MarsCorrection(clip=1.0), grads)
    for u in outs:
        norm = torch.linalg.vector_norm(u.double()).item()
        assert torch.isfinite(u).all() and norm <= 1.0 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_norm_does_not_overflow(dtype) -> None:
    # 200^2 * 64 overflows float16's 65504: the norm is taken in float32.
    g = torch.full((8, 8), 200.0, dtype=dtype)
    (u,), _ = run(MarsCorrection(gamma=0.0), [g])
    assert u.dtype == dtype
    assert torch.allclose(u.float(), torch.full((8, 8), 1 / 8), rtol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -0.1}, "gamma"),
        ({"beta1": 1.0}, "beta1"),
        ({"clip": 0.0}, "clip"),
        ({"clip": math.inf}, "clip"),
        ({"variant": "approx"}, "variant"),
        ({"first_step": "skip"}, "first_step"),
    ],
)
def test_mars_correction_validates(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        MarsCorrection(**kwargs)


def test_lion_sign_by_hand_and_with_equal_betas_is_the_sign_of_the_ema() -> None:
    t = LionSign(betas=(0.5, 0.75))
    g1, g2 = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([-3.0, 1.0, 0.0])
    (u1, u2), s = run(t, [g1, g2])
    assert torch.equal(u1, torch.tensor([1.0, -1.0, 0.0]))  # sign(0.5 g1); sign(0) = 0
    # m1 = 0.25 g1 = (0.25, -0.5, 0); sign(0.5 m1 + 0.5 g2) = sign(-1.375, 0.25, 0)
    assert torch.equal(u2, torch.tensor([-1.0, 1.0, 0.0]))
    assert torch.equal(s["exp_avg"], 0.75 * 0.25 * g1 + 0.25 * g2)
    grads = [torch.randn(4, 5) for _ in range(5)]
    outs, s = run(LionSign(betas=(0.9, 0.9)), grads)
    m = torch.zeros(4, 5)
    for g, u in zip(grads, outs, strict=True):
        m.lerp_(g, 0.1)
        assert torch.equal(u, m.sign())


def test_lion_sign_keeps_float32_momentum_for_16_bit_params() -> None:
    p = torch.zeros(3, dtype=torch.bfloat16)
    s = LionSign().init(p)
    assert s["exp_avg"].dtype == torch.float32
    u = LionSign().apply(torch.ones(3, dtype=torch.bfloat16), s, Ctx(1, 0.1, 0.0, p, p))
    assert u.dtype == torch.bfloat16 and torch.equal(u, torch.ones(3, dtype=torch.bfloat16))


def test_chain_state_keys() -> None:
    c = chain(MarsCorrection(), LionSign())
    assert set(c.init(torch.zeros(2, 2))) == {"mars.prev_grad", "lion.exp_avg"}
    assert set(chain(MarsCorrection(variant="exact")).init(torch.zeros(2))) == {"mars.prev_param"}
