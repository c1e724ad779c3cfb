"""mars_adamw and mars_lion: reductions, the plan, the exact variant through step(closure),
checkpoints, and convergence at the registry default lr."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim import NonFiniteGradientError
from orthoptim.bench.models import TinyGPT
from orthoptim.recipes.plan import group_lr
from tests.helpers import fixed_grads, save_and_load

SHAPES = [(6, 10), (12, 4), (16,)]


def run(name: str, dtype: torch.dtype, steps: int = 20, scale: float = 1.0, **options):
    """Parameters after each step of ``name`` on a fixed gradient sequence."""
    ps = [fixed_grads(s, 1, dtype, seed=50 + i)[0].requires_grad_() for i, s in enumerate(SHAPES)]
    grads = [fixed_grads(s, steps, dtype, seed=i) for i, s in enumerate(SHAPES)]
    opt = orthoptim.build(name, ps, lr=2.0**-6, weight_decay=2.0**-7, **options)
    out = []
    for t in range(steps):
        for p, g in zip(ps, grads, strict=True):
            p.grad = g[t] * scale
        opt.step()
        out.append([p.detach().clone() for p in ps])
    return out


def assert_same(a, b) -> None:
    for xs, ys in zip(a, b, strict=True):
        for x, y in zip(xs, ys, strict=True):
            assert torch.equal(x, y)


# ------------------------------------------------------------------------------------------
# reductions: gamma = 0 is the base optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mars_adamw_with_gamma_zero_and_no_clip_is_adamw_bit_for_bit(dtype) -> None:
    betas = (0.95, 0.99)
    mars = run("mars_adamw", dtype, gamma=0.0, clip=None, betas=betas)
    # The eager adamw chain: the fused kernel (the default fast path) rounds differently.
    assert_same(mars, run("adamw", dtype, betas=betas, fast_paths=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mars_adamw_with_gamma_zero_is_adamw_while_the_clip_is_inactive(dtype) -> None:
    # Gradients of norm < 1 per tensor: the default clip divides by exactly 1.
    small = run("mars_adamw", dtype, scale=0.05, gamma=0.0, betas=(0.95, 0.99))
    assert_same(small, run("adamw", dtype, scale=0.05, betas=(0.95, 0.99), fast_paths=False))


def test_mars_adamw_with_gamma_zero_matches_torch_adamw() -> None:
    ps = [fixed_grads(s, 1, torch.float64, seed=50 + i)[0] for i, s in enumerate(SHAPES)]
    grads = [fixed_grads(s, 20, torch.float64, seed=i) for i, s in enumerate(SHAPES)]
    ours = [p.clone().requires_grad_() for p in ps]
    theirs = [p.clone().requires_grad_() for p in ps]
    lr, wd = 2.0**-6, 2.0**-7
    a = orthoptim.build("mars_adamw", ours, lr=lr, weight_decay=wd, gamma=0.0, clip=None)
    b = torch.optim.AdamW(theirs, lr=lr, weight_decay=wd, betas=(0.95, 0.99), eps=1e-8)
    for t in range(20):
        for x, y, g in zip(ours, theirs, grads, strict=True):
            x.grad, y.grad = g[t].clone(), g[t].clone()
        a.step()
        b.step()
    for x, y in zip(ours, theirs, strict=True):
        # torch decays p first, then steps (two roundings of p, ours one): ~1 ulp of |p| <~ 3
        # per step.
        assert (x - y).abs().max().item() <= 20 * 2.3e-16 * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mars_lion_with_gamma_zero_and_no_clip_is_lion(dtype) -> None:
    betas = (0.9, 0.99)
    steps, lr, wd = 20, 2.0**-6, 2.0**-7
    mars = run("mars_lion", dtype, steps=steps, gamma=0.0, clip=None, betas=betas)
    # Lion (Chen et al. 2023, arXiv 2302.06675) written out.
    ps = [fixed_grads(s, 1, dtype, seed=50 + i)[0] for i, s in enumerate(SHAPES)]
    grads = [fixed_grads(s, steps, dtype, seed=i) for i, s in enumerate(SHAPES)]
    ms = [torch.zeros_like(p) for p in ps]
    for t in range(steps):
        for i, (p, m) in enumerate(zip(ps, ms, strict=True)):
            g = grads[i][t]
            update = torch.sign(m.lerp(g, 1 - betas[0]))
            ms[i] = m.lerp(g, 1 - betas[1])
            ps[i] = p - lr * (update + wd * p)
            # Same lerps, so the same signs; only the rounding of p differs (~1 ulp of |p| <~ 4
            # per step).
            atol = (t + 1) * 4 * torch.finfo(dtype).eps
            assert torch.allclose(mars[t][i], ps[i], rtol=0, atol=atol)


def test_default_options_are_not_a_reduction() -> None:
    # The correction and the clip change the trajectory: the reductions above are not vacuous.
    assert not torch.equal(
        run("mars_adamw", torch.float64)[-1][0], run("adamw", torch.float64)[-1][0]
    )


# ------------------------------------------------------------------------------------------
# the plan


def tiny_gpt() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(vocab=32, dim=16, depth=1, heads=2, context=8)


def lm_loss(model: nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 32, (4, 8), generator=g)
    logits = model(idx)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32), idx[:, 1:].reshape(-1))


@pytest.mark.parametrize(("name", "vector_lr"), [("mars_adamw", 3e-3), ("mars_lion", 3e-3)])
def test_plan_sends_matrices_to_mars_and_vectors_to_adamw(name, vector_lr) -> None:
    model = tiny_gpt()
    opt = orthoptim.build(name, model)
    routes = {g["route"]: g for g in opt.param_groups}
    mars = {n for g in opt.param_groups if g["route"] == name for n in g["param_names"]}
    assert {"tok_emb.weight", "pos_emb.weight", "lm_head.weight"} <= mars
    assert all(p.ndim >= 2 for g in opt.param_groups if g["route"] == name for p in g["params"])
    assert all(p.ndim < 2 for g in opt.param_groups if g["route"] == "adamw" for p in g["params"])
    # The reference's 1-D AdamW: absolute lr_1d = 3e-3, weight_decay_1d = 0.1.
    assert group_lr(routes["adamw"]) == pytest.approx(vector_lr)
    assert routes["adamw"]["weight_decay"] == 0.1


def test_state_bytes_per_parameter() -> None:
    # mars_adamw: prev_grad, exp_avg, exp_avg_sq on matrices (3 float32 = 12 B per element),
    # AdamW's 2 on vectors; mars_lion: prev_grad and exp_avg (8 B). The exact variant keeps
    # prev_param instead of prev_grad (same size) and adds it on vectors.
    model = tiny_gpt()
    n_matrix = sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    n_vector = sum(p.numel() for p in model.parameters() if p.ndim < 2)

    def state_bytes(name: str, **options) -> int:
        opt = orthoptim.build(name, model, **options)
        opt.step(lambda: (opt.zero_grad(), lm_loss(model, 0).backward()))
        return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values())

    steps = 4 * len(list(model.parameters()))  # one float32 step counter each
    assert state_bytes("mars_adamw") == 12 * n_matrix + 8 * n_vector + steps
    assert state_bytes("mars_adamw", variant="exact") == 12 * (n_matrix + n_vector) + steps
    assert state_bytes("mars_lion") == 8 * n_matrix + 8 * n_vector + steps


# ------------------------------------------------------------------------------------------
# the exact variant: step(closure)


def make_closure(model: nn.Module, opt: torch.optim.Optimizer, seed: int, calls: list[int]):
    def closure() -> torch.Tensor:
        calls.append(seed)
        opt.zero_grad()
        loss = lm_loss(model, seed)
        loss.backward()
        return loss

    return closure


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()] + [
        t.clone() for s in opt.state.values() for t in s.values()
    ]


@pytest.mark.parametrize("name", ["mars_adamw", "mars_lion"])
def test_exact_step_without_closure_raises_before_changing_anything(name) -> None:
    model = tiny_gpt()
    opt = orthoptim.build(name, model, variant="exact")
    lm_loss(model, 0).backward()
    with pytest.raises(ValueError, match="step\\(closure\\)"):
        opt.step()
    assert not opt.state  # nothing initialised
    opt.step(make_closure(model, opt, 0, []))
    lm_loss(model, 1).backward()
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="previous parameters"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model, opt), strict=True))


def test_exact_evaluates_the_closure_twice_from_the_second_step() -> None:
    model = tiny_gpt()
    opt = orthoptim.build("mars_adamw", model, variant="exact")
    calls: list[int] = []
    for t in range(3):
        loss = opt.step(make_closure(model, opt, t, calls))
    assert calls == [0, 1, 1, 2, 2]
    assert isinstance(loss, torch.Tensor)  # the loss at the current parameters


def test_exact_with_gamma_zero_is_adamw() -> None:
    ref, model = tiny_gpt(), tiny_gpt()
    base = orthoptim.build(
        "adamw",
        list(ref.parameters()),
        betas=(0.95, 0.99),
        lr=3e-3,
        weight_decay=0.0,
        fast_paths=False,  # the eager chain: the fused AdamW kernel rounds differently
    )
    opt = orthoptim.build(
        "mars_adamw", list(model.parameters()), gamma=0.0, clip=None, variant="exact"
    )
    for t in range(4):
        opt.step(make_closure(model, opt, t, []))
        base.step(make_closure(ref, base, t, []))
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


def test_exact_restores_parameters_when_the_closure_fails() -> None:
    model = tiny_gpt()
    opt = orthoptim.build("mars_adamw", model, variant="exact")
    opt.step(make_closure(model, opt, 0, []))
    before = snapshot(model, opt)

    def failing() -> torch.Tensor:
        raise RuntimeError("data loader died")

    with pytest.raises(RuntimeError, match="data loader died"):
        opt.step(failing)
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model, opt), strict=True))


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_exact_nonfinite_gradient_at_the_previous_point(policy) -> None:
    model = tiny_gpt()
    opt = orthoptim.build("mars_adamw", model, variant="exact", nonfinite=policy)
    opt.step(make_closure(model, opt, 0, []))
    before = snapshot(model, opt)
    calls: list[int] = []

    def closure() -> torch.Tensor:
        loss = make_closure(model, opt, 1, calls)()
        if len(calls) == 1:  # only at the previous point
            model.lm_head.weight.grad[0, 0] = float("nan")
        return loss

    if policy == "raise":
        with pytest.raises(NonFiniteGradientError, match=r"lm_head\.weight at its previous"):
            opt.step(closure)
    else:
        opt.step(closure)
        assert opt.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model, opt), strict=True))


@pytest.mark.parametrize("name", ["mars_adamw", "mars_lion"])
def test_exact_checkpoint_resume_is_bit_exact(name) -> None:
    model = tiny_gpt()
    opt = orthoptim.build(name, model, variant="exact")
    for t in range(3):
        opt.step(make_closure(model, opt, t, []))
    saved = save_and_load(model, opt)
    resumed = tiny_gpt()
    resumed.load_state_dict(saved["model"])
    resumed_opt = orthoptim.build(name, resumed, variant="exact")
    resumed_opt.load_state_dict(saved["opt"])
    for t in range(3, 6):
        opt.step(make_closure(model, opt, t, []))
        resumed_opt.step(make_closure(resumed, resumed_opt, t, []))
    assert all(
        torch.equal(a, b)
        for a, b in zip(snapshot(model, opt), snapshot(resumed, resumed_opt), strict=True)
    )


# ------------------------------------------------------------------------------------------
# convergence at the registry default lr


def distance_to_optimum(name: str, steps: int = 800) -> float:
    """Ill-conditioned quadratic f(W) = sum h (W - W*)^2 / 2 with curvatures h from 1e-2 to 1e2
    (condition number 1e4) spread over a matrix; relative distance to W* after ``steps``."""
    g = torch.Generator().manual_seed(0)
    h = torch.logspace(-2, 2, 96).reshape(8, 12)[:, torch.randperm(12, generator=g)]
    w_star = 0.1 * torch.randn(8, 12, generator=g)
    w = torch.zeros(8, 12, requires_grad=True)
    opt = orthoptim.build(name, [w])
    for _ in range(steps):
        w.grad = h * (w.detach() - w_star)
        opt.step()
    return ((w.detach() - w_star).norm() / w_star.norm()).item()


def test_convergence_on_an_ill_conditioned_quadratic_at_default_lr() -> None:
    # Measured (800 steps): sgd (lr 0.01) 0.100, adamw (1e-3) 5.0e-4, mars_adamw (3e-3) 0.0
    # (W* to the last bit), mars_lion (3e-4) 5.3e-3. SGD's step is stable only for lr < 2 / h_max
    # and then barely moves the flat directions; the per-element normalisation of the MARS
    # instances does not care.
    sgd = distance_to_optimum("sgd")
    assert sgd > 0.05
    assert distance_to_optimum("mars_adamw") < min(1e-3, distance_to_optimum("adamw"))
    assert distance_to_optimum("mars_lion") < sgd / 10
