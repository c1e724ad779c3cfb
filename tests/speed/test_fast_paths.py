"""The in-place steps equal the out-of-place formulas, bit for bit (ARCHITECTURE 7.13).

``ScaleByAdam`` writes Adam's direction into the chain's working copy and ``Orthogonalize`` casts
its Newton-Schulz factor into it (measured gains in benchmarks/records/2026-11-25_step-speed).
A batched Newton-Schulz over same-shape matrices was measured and not kept: on this 2-core CPU it
gained nothing on the issue's 24 matrices (295 vs 296 ms for the iteration alone) and made the
Muon step slower (339 vs 298 ms).
"""

from __future__ import annotations

import pytest
import torch

from orthoptim.functional import adam_direction, matrix_view, newton_schulz
from orthoptim.functional.coefficients import resolve_preset
from orthoptim.transforms import Orthogonalize, ScaleByAdam
from orthoptim.transforms.base import Ctx

SHAPES = [(48, 16), (16, 16), (16, 64), (12, 4, 3, 3), (20, 10)]


def ctx(g: torch.Tensor, step: int = 1) -> Ctx:
    return Ctx(step, 0.1, 0.0, g, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_direction_into_out_equals_a_new_tensor(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    m, v = torch.randn(7, 5, dtype=dtype), torch.rand(7, 5, dtype=dtype)
    fresh = adam_direction(m, v, step=3, betas=(0.9, 0.95), eps=1e-8)
    out = torch.empty_like(m)
    assert adam_direction(m, v, step=3, betas=(0.9, 0.95), eps=1e-8, out=out) is out
    assert torch.equal(out, fresh)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_scale_by_adam_in_place_equals_the_formula(dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    t = ScaleByAdam(betas=(0.9, 0.95), eps=1e-10)
    p = torch.randn(5, 7, dtype=dtype)
    state = t.init(p)
    m = torch.zeros_like(p, dtype=state["exp_avg"].dtype)
    v = torch.zeros_like(m)
    for step in range(1, 5):
        g = torch.randn_like(p)
        u = t.apply(g.clone(), state, ctx(g, step))
        m.lerp_(g.to(m.dtype), 1 - 0.9)
        v.mul_(0.95).addcmul_(g.to(m.dtype), g.to(m.dtype), value=1 - 0.95)
        expected = adam_direction(m, v, step=step, betas=(0.9, 0.95), eps=1e-10).to(dtype)
        assert u.dtype == dtype and torch.equal(u, expected)
        assert torch.equal(state["exp_avg"], m) and torch.equal(state["exp_avg_sq"], v)


@pytest.mark.parametrize("compute_dtype", ["bfloat16", "float32", "float64", "input"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalize_in_place_equals_the_factor(compute_dtype: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    t = Orthogonalize(compute_dtype=compute_dtype)  # type: ignore[arg-type]
    gs = [torch.randn(s, dtype=dtype) for s in SHAPES] + [torch.randn(32, 16, dtype=dtype).mT]
    for g in gs:
        matrix = matrix_view(g)
        preset = resolve_preset("keller_quintic", *matrix.shape)
        factor = newton_schulz(
            matrix,
            preset.schedule(5),
            compute_dtype=None if compute_dtype == "input" else getattr(torch, compute_dtype),
        )
        out = t.apply(g.clone(), {}, ctx(g))
        assert out.shape == g.shape and out.dtype == g.dtype
        assert torch.equal(out, factor.to(dtype).reshape(g.shape))
