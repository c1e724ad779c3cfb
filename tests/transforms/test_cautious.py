"""The cautious mask (Liang et al., arXiv 2411.16085) and the ``cautious`` recipe helper.

The oracle is the paper's rule written per entry: keep ``u_i`` where ``u_i g_i > 0``, zero it
elsewhere, and multiply the kept entries by the rescale of the chosen convention.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthoptim import ChainOptimizer
from orthoptim.recipes import Plan, adamw, muon
from orthoptim.recipes.gradient_sign import cautious, grams
from orthoptim.registry import get
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.cautious import CAUTIOUS_RESCALES, CautiousMask
from tests.helpers import fixed_grads

STEPS = 20


def oracle(u: list[float], g: list[float], rescale: str) -> list[float]:
    # u g > 0 in exact arithmetic (the float product can underflow to 0).
    keep = [float((ui > 0 and gi > 0) or (ui < 0 and gi < 0)) for ui, gi in zip(u, g, strict=True)]
    n, kept = len(keep), sum(keep)
    scale = {
        "mean_clamped": 1.0 / max(kept / n, 1e-3),
        "plus_one": n / (kept + 1.0),
        "at_least_one": n / max(kept, 1.0),
        "none": 1.0,
    }[rescale]
    return [ui * ki * scale for ui, ki in zip(u, keep, strict=True)]


def apply(rescale: str, u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return CautiousMask(rescale=rescale).apply(u.clone(), {}, Ctx(1, 0.1, 0.0, g, g))


@pytest.mark.parametrize("rescale", CAUTIOUS_RESCALES)
@given(
    u=st.lists(st.floats(-1e6, 1e6, allow_subnormal=False), min_size=1, max_size=40),
    data=st.data(),
)
def test_matches_the_per_entry_oracle(rescale, u, data) -> None:
    g = data.draw(st.lists(st.floats(-1e6, 1e6), min_size=len(u), max_size=len(u)))
    got = apply(rescale, torch.tensor(u, dtype=torch.float64), torch.tensor(g, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(oracle(u, g, rescale), dtype=torch.float64))


@pytest.mark.parametrize("rescale", ["mean_clamped", "at_least_one", "none"])
def test_agreeing_signs_leave_the_update_unchanged(rescale) -> None:
    u = torch.randn(7, 5, dtype=torch.float64)
    g = u.sign() * torch.rand(7, 5, dtype=torch.float64)
    assert torch.equal(apply(rescale, u, g), u)


def test_plus_one_scales_an_agreeing_update_by_n_over_n_plus_one() -> None:
    u = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(apply("plus_one", u, u.abs() * u.sign()), u * 35 / 36)


@pytest.mark.parametrize("rescale", CAUTIOUS_RESCALES)
def test_all_disagreeing_or_zero_gradient_gives_a_finite_zero_update(rescale) -> None:
    u = torch.randn(4, 3)
    for g in (-u, torch.zeros_like(u)):
        out = apply(rescale, u, g)
        assert torch.equal(out, torch.zeros_like(u))


def test_mean_clamped_caps_the_rescale_at_1000() -> None:
    u, g = torch.ones(5000, dtype=torch.float64), -torch.ones(5000, dtype=torch.float64)
    g[0] = 1.0  # one entry of 5000 kept: mean 2e-4, clamped to 1e-3
    assert apply("mean_clamped", u, g)[0].item() == pytest.approx(1000.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_mask_of_tiny_16_bit_values_does_not_underflow(dtype) -> None:
    # u * g would underflow to 0 (and mask everything); signs do not.
    u = torch.full((6,), 1e-7, dtype=dtype)
    g = torch.full((6,), 1e-7, dtype=dtype)
    g[0] = -g[0]
    out = apply("at_least_one", u, g)
    assert out.dtype == dtype
    assert out[0] == 0 and torch.all(out[1:] > 0)


# ------------------------------------------------------------------------------------------
# cautious(recipe)


def keys(recipe) -> list[str]:
    return [t.key for t in recipe.transforms]


def test_placement() -> None:
    assert keys(cautious(adamw())) == ["adam", "cautious", "weight_decay"]
    assert keys(cautious(muon())) == [
        "momentum", "orthogonalize", "shape_scale", "cautious", "weight_decay"
    ]  # fmt: skip
    assert keys(cautious(muon(), after="momentum"))[:3] == ["momentum", "cautious", "orthogonalize"]
    plan = cautious(get("muon").whole_model_plan())
    assert isinstance(plan, Plan)
    assert all("cautious" in keys(r.chain) for r in plan.routes)
    with pytest.raises(ValueError, match="after must be the key of a transform"):
        cautious(adamw(), after="momentum")
    with pytest.raises(TypeError, match="Chain or a Plan"):
        cautious("adamw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cautious rescale must be one of"):
        cautious(adamw(), rescale="mean")  # type: ignore[arg-type]


def trajectory(recipe, grads, init, wd=0.01, lr=0.01):
    p = init.clone().requires_grad_()
    # The eager chains on both sides: the fused AdamW fast path rounds differently.
    opt = ChainOptimizer([p], recipe, lr=lr, weight_decay=wd, fast_paths=False)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def same_sign_grads(shape, dtype=torch.float64):
    """Gradients with a fixed sign per entry, so every momentum and Adam update agrees with them."""
    signs = torch.sign(fixed_grads(shape, 1, dtype, seed=9)[0])
    return [g.abs() * signs for g in fixed_grads(shape, STEPS, dtype)]


MUON64 = muon(compute_dtype="float64")


@pytest.mark.parametrize(
    ("plain", "masked"),
    [(adamw(), cautious(adamw())), (MUON64, cautious(MUON64, after="momentum"))],
    ids=["adamw", "muon"],
)
def test_with_agreeing_signs_the_cautious_chain_is_the_plain_chain(plain, masked) -> None:
    init = fixed_grads((8, 6), 1, torch.float64, seed=5)[0]
    grads = same_sign_grads((8, 6))
    assert torch.equal(trajectory(masked, grads, init), trajectory(plain, grads, init))
    # ... and with ordinary gradients the mask changes the trajectory.
    mixed = fixed_grads((8, 6), STEPS, torch.float64)
    assert not torch.equal(trajectory(masked, mixed, init), trajectory(plain, mixed, init))


def test_cautious_grams_is_grams() -> None:
    # Grams' update already has the gradient's sign wherever g != 0: nothing to mask.
    init = fixed_grads((8, 6), 1, torch.float64, seed=5)[0]
    mixed = fixed_grads((8, 6), STEPS, torch.float64)
    assert torch.equal(trajectory(cautious(grams()), mixed, init), trajectory(grams(), mixed, init))


def test_the_mask_never_touches_the_weight_decay() -> None:
    p = torch.randn(4, 3, dtype=torch.float64).requires_grad_()
    opt = ChainOptimizer([p], cautious(adamw()), lr=0.1, weight_decay=0.0)
    g1 = torch.randn(4, 3, dtype=torch.float64)
    p.grad = g1.clone()
    opt.step()
    # Tiny and opposite to g1: Adam's m (hence its update) keeps g1's sign, so every entry
    # disagrees with the new gradient and is masked; only the decay moves the weights.
    opt.param_groups[0]["weight_decay"] = 0.5
    q = p.detach().clone()
    p.grad = -1e-12 * torch.sign(g1)
    opt.step()
    torch.testing.assert_close(p.detach(), q * (1 - 0.1 * 0.5), rtol=0, atol=1e-15)


def test_a_cautious_plan_trains_a_whole_model() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = torch.tanh(x @ torch.randn(6, 3, generator=g))
    c_muon = get("muon").default_plan(cautious(muon(), after="momentum"))  # C-Muon's placement
    for plan in (cautious(get("muon").whole_model_plan()), c_muon):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        opt = ChainOptimizer(model, plan, lr=0.02)
        losses = []
        for _ in range(30):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0]  # measured 0.67 -> 0.19 (default), 0.27 (C-Muon)
