"""Every fast path equals the eager path it replaces (ARCHITECTURE 7.13).

``ScaleByAdam`` writes Adam's direction into the chain's working copy and ``Orthogonalize`` casts
its Newton-Schulz factor into it (measured gains in benchmarks/records/2026-11-25_step-speed):
bit for bit. The shell runs a chain one parameter at a time unless a transform works on the
group together: bit for bit equal to transform-major. ``adamw()`` routes run torch's fused AdamW
kernel (``orthoptim.fused``): equal to round-off, with interchangeable state.
A batched Newton-Schulz over same-shape matrices was measured and not kept: on this 2-core CPU it
gained nothing on the issue's 24 matrices (295 vs 296 ms for the iteration alone) and made the
Muon step slower (339 vs 298 ms); measured again with benchmarks/ns_products.py
(benchmarks/records/2026-11-25_step-speed-4), 1.15-1.18x the FLOP floor against 1.05-1.06x one
matrix at a time. Not kept either, for want of a measurable gain: Newton-Schulz products written
into four reused buffers, and momentum reading the gradient instead of its working copy (both
bit for bit equal, within the noise of an in-process A/B of the whole step).
"""

from __future__ import annotations

import copy

import pytest
import torch

import orthoptim
from orthoptim import ChainOptimizer
from orthoptim import fused as fused_module
from orthoptim.eager import descend_
from orthoptim.functional import adam_direction, matrix_view, newton_schulz
from orthoptim.functional.coefficients import resolve_preset
from orthoptim.fused import FusedAdamW
from orthoptim.recipes import adamw, muon, normuon, sgd
from orthoptim.transforms import Orthogonalize, ScaleByAdam, chain
from orthoptim.transforms.base import Ctx
from tests.optim.test_amp import CountOps

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


def fixed_run(
    recipe,
    dtype: torch.dtype,
    steps: int = 12,
    fast_paths: bool = True,
    wd: float = 0.05,
    foreach: bool | None = None,
) -> tuple[list[torch.Tensor], ChainOptimizer]:
    torch.manual_seed(7)
    ps = [torch.randn(s, dtype=dtype, requires_grad=True) for s in [(24, 8), (8, 40), (6, 2, 3, 3)]]
    grads = [[torch.randn(p.shape, dtype=dtype) for p in ps] for _ in range(steps)]
    opt = ChainOptimizer(
        ps, recipe, lr=0.01, weight_decay=wd, fast_paths=fast_paths, foreach=foreach
    )
    for gs in grads:
        for p, g in zip(ps, gs, strict=True):
            p.grad = g
        opt.step()
    return [p.detach().clone() for p in ps], opt


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-14), (torch.float32, 2e-6)])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_fused_adamw_equals_the_eager_chain(dtype: torch.dtype, atol: float, wd: float) -> None:
    # The kernel decays theta (1 - lr wd) before the Adam step, the chain in the same update:
    # a few ulp of |theta| <= 4 over 12 steps.
    recipe = adamw(betas=(0.9, 0.95), eps=1e-10)
    fused, fused_opt = fixed_run(recipe, dtype, wd=wd)
    eager, eager_opt = fixed_run(recipe, dtype, fast_paths=False, wd=wd)
    for x, y in zip(fused, eager, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)
    for a, b in zip(fused_opt.state.values(), eager_opt.state.values(), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=atol)


def test_fused_and_eager_adamw_checkpoints_are_interchangeable() -> None:
    # A checkpoint of the fused path resumes on the eager chain (and back) from the same
    # buffers: after loading, both continue to the same parameters to round-off.
    torch.manual_seed(3)
    p = torch.randn(16, 8, requires_grad=True)
    grads = [torch.randn(16, 8) for _ in range(6)]
    fused = ChainOptimizer([p], adamw(), lr=0.01, weight_decay=0.05)
    for g in grads[:3]:
        p.grad = g
        fused.step()
    q = p.detach().clone().requires_grad_()
    eager = ChainOptimizer([q], adamw(), lr=0.01, weight_decay=0.05, fast_paths=False)
    eager.load_state_dict(copy.deepcopy(fused.state_dict()))  # as through torch.save
    for key, value in fused.state[p].items():
        assert torch.equal(eager.state[q][key], value)
    for g in grads[3:]:
        p.grad, q.grad = g, g.clone()
        fused.step()
        eager.step()
    torch.testing.assert_close(q, p, rtol=0, atol=2e-6)
    assert int(eager.state[q]["step"]) == int(fused.state[p]["step"]) == 6


def test_fused_adamw_is_only_used_for_the_chains_and_tensors_it_computes() -> None:
    assert FusedAdamW.of(adamw()) == FusedAdamW(
        (0.9, 0.999), 1e-8, "adam.exp_avg", "adam.exp_avg_sq"
    )
    assert FusedAdamW.of(chain(ScaleByAdam(nesterov=True))) is None
    assert FusedAdamW.of(chain(ScaleByAdam(eps_placement="raw"))) is None
    assert FusedAdamW.of(muon()) is None and FusedAdamW.of(sgd()) is None
    fused = FusedAdamW.of(adamw())
    assert fused is not None
    for dtype, expected in [(torch.float32, True), (torch.float64, True), (torch.bfloat16, True)]:
        p = torch.zeros(3, dtype=dtype)
        p.grad = torch.ones_like(p)
        state = {
            "step": torch.tensor(1.0),
            **{f"adam.{k}": v for k, v in ScaleByAdam().init(p).items()},
        }
        assert fused.supports([p], [state]) is expected
        state["adam.exp_avg"] = state["adam.exp_avg"].to(dtype)  # 16-bit moments: the chain's
        assert fused.supports([p], [state]) is (dtype != torch.bfloat16)


def test_bf16_adamw_keeps_float32_moments() -> None:
    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    opt = orthoptim.build("adamw", model)
    model(torch.randn(2, 4, dtype=torch.bfloat16)).float().sum().backward()
    opt.step()
    assert all(s["adam.exp_avg"].dtype == torch.float32 for s in opt.state.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk", [fused_module.CAST_CHUNK, 200])
def test_fused_adamw_of_16_bit_parameters_equals_the_eager_chain(dtype, chunk, monkeypatch):
    # The kernel runs on float32 copies and rounds each parameter once per step; the chain
    # rounds the update to 16 bits, then the sum: per step at most about one 16-bit ulp of the
    # larger of the parameter and the step (lr = 0.01; measured up to 1.6 over 4 steps), while
    # the float32 moments (same gradients) agree to float32 round-off.
    # A chunk of 200 elements splits the parameters into several casts (one larger alone).
    monkeypatch.setattr(fused_module, "CAST_CHUNK", chunk)
    recipe = adamw(betas=(0.9, 0.95), eps=1e-10)
    steps = 4
    fused, fused_opt = fixed_run(recipe, dtype, steps=steps)
    eager, eager_opt = fixed_run(recipe, dtype, steps=steps, fast_paths=False)
    torch.manual_seed(7)  # fixed_run's starting point
    starts = [torch.randn(s, dtype=dtype) for s in [(24, 8), (8, 40), (6, 2, 3, 3)]]
    ulp = torch.finfo(dtype).eps
    for x, y, start in zip(fused, eager, starts, strict=True):
        assert x.dtype == dtype
        bound = steps * ulp * (y.float().abs() + 0.01)
        assert ((x.float() - y.float()).abs() <= bound).all()
        assert (x != start).float().mean() > 0.5  # the steps moved it
    for a, b in zip(fused_opt.state.values(), eager_opt.state.values(), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("foreach", [None, True])
def test_16_bit_parameters_take_the_kernel_on_every_path(foreach) -> None:
    p = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    opt = ChainOptimizer([p], adamw(), lr=0.01, foreach=foreach)
    p.grad = torch.randn_like(p)
    with CountOps() as counted:
        opt.step()
    assert counted.ops["_fused_adamw_"] == 1


def test_fused_adamw_of_16_bit_parameters_leaves_their_gradients_unscaled() -> None:
    torch.manual_seed(0)
    p = torch.randn(8, 4, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.randn(8, 4, dtype=torch.bfloat16) * 1024
    opt = ChainOptimizer([p], adamw(), lr=0.01)
    expected = p.grad / 1024
    opt.grad_scale = torch.tensor(1024.0)  # what GradScaler.step sets
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert torch.equal(p.grad, expected)


def transform_major(
    recipe, params: list[torch.Tensor], grads: list[list[torch.Tensor]], lr: float, wd: float
) -> list[torch.Tensor]:
    """The parameters after ``grads`` when the chain runs transform-major over fresh gradient
    clones (the shell's path for group-wise chains, and the reference of the param-major one),
    its trailing scale and decay folded into the final update as the shell folds them
    (``Chain.fold_from``; the fold against the unfolded chain: tests/optim/test_foreach.py)."""
    mine = [p.detach().clone() for p in params]
    states = [{"step": torch.tensor(0.0), **recipe.init(p)} for p in mine]
    for gs in grads:
        ctxs = []
        for s, p, g in zip(states, mine, gs, strict=True):
            s["step"] += 1
            ctxs.append(Ctx(int(s["step"]), lr, wd, p, g))
        clones = [g.clone(memory_format=torch.preserve_format) for g in gs]
        updates = recipe.apply_range(0, recipe.fold_from, clones, states, ctxs)
        for p, u, c in zip(mine, updates, ctxs, strict=True):
            descend_(p, u, lr, *recipe.folded(c))
    return mine


def stepped(recipe, params, grads, lr: float, wd: float) -> list[torch.Tensor]:
    """The same through ``ChainOptimizer`` (one parameter at a time for these chains)."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = ChainOptimizer(ps, recipe, lr=lr, weight_decay=wd)
    for gs in grads:
        for p, g in zip(ps, gs, strict=True):
            p.grad = g
        opt.step()
    return [p.detach() for p in ps]


@pytest.mark.parametrize("recipe", [muon(compute_dtype="float32"), normuon(), sgd(momentum=0.9)])
def test_one_parameter_at_a_time_equals_transform_major(recipe) -> None:
    torch.manual_seed(1)
    ps = [torch.randn(s) for s in [(24, 8), (8, 40), (24, 8)]]
    grads = [[torch.randn(p.shape) for p in ps] for _ in range(4)]
    assert not recipe.groupwise
    got = stepped(recipe, ps, grads, 0.01, 0.01)
    for p, q in zip(got, transform_major(recipe, ps, grads, 0.01, 0.01), strict=True):
        assert torch.equal(p, q)


def test_the_shared_working_buffer_handles_mixed_sizes_dtypes_and_layouts() -> None:
    # Param-major steps copy each gradient into one buffer per dtype; a channels_last gradient
    # gets its own clone. Every update must equal the transform-major run of the same chain.
    torch.manual_seed(2)
    conv = torch.randn(6, 3, 3, 3).to(memory_format=torch.channels_last)
    ps = [torch.randn(40, 8), torch.randn(4, 4), conv, torch.randn(40, 8).double()]
    grads = [[torch.randn_like(p) for p in ps] for _ in range(3)]
    recipe = muon(compute_dtype="float32")
    got = stepped(recipe, ps, grads, 0.01, 0.0)
    for p, q in zip(got, transform_major(recipe, ps, grads, 0.01, 0.0), strict=True):
        assert torch.equal(p, q)
    assert got[2].is_contiguous(memory_format=torch.channels_last)
