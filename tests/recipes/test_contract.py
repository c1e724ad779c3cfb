"""Registry-driven contract: every registered optimizer behaves as a torch.optim.Optimizer.

New specs join automatically; capability differences belong on the ``Spec``, not here.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim.bench.models import SmallCNN, TinyGPT
from orthoptim.registry import REGISTRY
from tests.helpers import needs_closure, save_and_load, step_all, step_on

NAMES = [spec.name for spec in REGISTRY]
# Options under which an optimizer's first step moves every parameter: oasis's warm start holds
# the parameters at w_0 for warmup - 1 steps (the paper's D_0 is estimated there).
FIRST_STEP_MOVES: dict[str, dict[str, int]] = {"oasis": {"warmup": 1}}


def tiny_gpt() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(vocab=32, dim=16, depth=1, heads=2, context=8)


def lm_loss(model: TinyGPT, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 32, (4, 8), generator=g)
    logits = model(idx)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32), idx[:, 1:].reshape(-1))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, first_seed: int = 0) -> None:
    for s in range(first_seed, first_seed + steps):
        step_on(opt, lambda s=s: lm_loss(model, s))


def all_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", NAMES)
def test_step_changes_every_param_and_never_touches_grad(name) -> None:
    model = tiny_gpt()
    opt = orthoptim.build(name, model, **FIRST_STEP_MOVES.get(name, {}))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if needs_closure(opt):  # a gradient estimator leaves its estimate in .grad, by design
        step_on(opt, lambda: lm_loss(model, 0))
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    else:
        lm_loss(model, 0).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), f"{name} modified the gradient of {n}"
        assert not torch.equal(p, before[n]), f"{name} did not update {n}"
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_skipped_and_get_no_state(name) -> None:
    model = tiny_gpt()
    opt = orthoptim.build(name, model)
    frozen = model.blocks[0].fc.weight
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    train(model, opt, 2)
    assert frozen.grad is None
    assert torch.equal(frozen, before)
    assert frozen not in opt.state


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_through_torch_save_is_bit_exact(name) -> None:
    model = tiny_gpt()
    opt = orthoptim.build(name, model)
    train(model, opt, 3)
    saved = save_and_load(model, opt)

    resumed = tiny_gpt()
    resumed.load_state_dict(saved["model"])
    resumed_opt = orthoptim.build(name, resumed)
    resumed_opt.load_state_dict(saved["opt"])

    train(model, opt, 3, first_seed=3)
    train(resumed, resumed_opt, 3, first_seed=3)
    for (n, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), f"{name}: {n} differs after resuming"
    for a, b in zip(all_state(opt), all_state(resumed_opt), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name) -> None:
    results = []
    for _ in range(2):
        model = tiny_gpt()
        train(model, orthoptim.build(name, model), 3)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_is_preserved(name, dtype) -> None:
    model = tiny_gpt().to(dtype)
    opt = orthoptim.build(name, model)
    train(model, opt, 2)
    for p in model.parameters():
        assert p.dtype == dtype
        assert torch.isfinite(p.float()).all()
    for t in all_state(opt):
        assert torch.isfinite(t.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_stay_finite(name) -> None:
    model = tiny_gpt()
    opt = orthoptim.build(name, model)
    params = list(model.parameters())
    for _ in range(2):
        step_all(opt, params, [torch.zeros_like(p) for p in params])
    for p in model.parameters():
        assert torch.isfinite(p).all()
    for t in all_state(opt):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("name", NAMES)
def test_conv_model_routes_every_param(name) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    opt = orthoptim.build(name, model, **FIRST_STEP_MOVES.get(name, {}))
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    before = copy.deepcopy(model.state_dict())
    step_on(opt, lambda: nn.functional.cross_entropy(model(x), y))
    routed = {n for g in opt.param_groups for n in g["param_names"]}
    assert routed == {n for n, _ in model.named_parameters()}
    for n, p in model.named_parameters():
        assert not torch.equal(p, before[n]), n


@pytest.mark.parametrize("name", NAMES)
def test_updates_never_alias_state(name) -> None:
    """The update a chain returns must not share storage with its state buffers."""
    model = tiny_gpt()
    opt = orthoptim.build(name, model)
    train(model, opt, 1)
    for group in opt.param_groups:
        chain = opt.plan.route_named(group["route"]).chain
        for p in group["params"]:
            state = {k: v.clone() for k, v in opt.state[p].items()}
            ctx = orthoptim.transforms.Ctx(
                2,
                group["lr"],
                group["weight_decay"],
                p,
                p.grad,
                grad_at_previous=p.grad if chain.previous_point is not None else None,
                hvp=(torch.ones_like(p), p.grad) if chain.needs_hvp else None,
            )
            u = chain.apply(p.grad.clone(), state, ctx)
            pointers = {t.untyped_storage().data_ptr() for t in state.values()}
            assert u.untyped_storage().data_ptr() not in pointers


@pytest.mark.parametrize("name", NAMES)
def test_explain_and_describe_render(name) -> None:
    opt = orthoptim.build(name, tiny_gpt())
    text = opt.explain()
    for route in opt.plan.routes:
        assert f"route {route.name}" in text
        for t in route.chain.transforms:
            assert type(t).__name__ in text
    assert "lm_head.weight" in opt.describe()


@pytest.mark.parametrize("name", NAMES)
def test_lambda_lr_schedule_is_honoured(name) -> None:
    """A LambdaLR factor of 0 freezes every parameter: the shell applies the scheduled lr."""
    model = tiny_gpt()
    opt = orthoptim.build(name, model, weight_decay=0.0)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, opt, 2)
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
