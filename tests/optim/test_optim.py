"""ChainOptimizer as a torch.optim.Optimizer: groups, schedulers, closures, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim import ChainOptimizer, recipes
from orthoptim.recipes.muon import MUON_ADAMW
from orthoptim.recipes.plan import group_lr


def sgd_plain() -> orthoptim.Chain:
    return recipes.sgd(momentum=0.0, nesterov=False)


def test_per_group_lr_and_weight_decay() -> None:
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = ChainOptimizer(
        [{"params": [a], "lr": 0.1, "weight_decay": 0.5}, {"params": [b]}], sgd_plain(), lr=0.01
    )
    a.grad, b.grad = torch.full((3,), 2.0), torch.full((3,), 2.0)
    opt.step()
    # SGD with L2: p - lr (g + wd p)
    torch.testing.assert_close(a, torch.full((3,), 1 - 0.1 * (2 + 0.5)))
    torch.testing.assert_close(b, torch.full((3,), 1 - 0.01 * 2))
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4),
    ],
    ids=["LambdaLR", "CosineAnnealingLR"],
)
def test_lr_schedulers_change_the_step(make_scheduler) -> None:
    p = torch.zeros(4, requires_grad=True)
    opt = ChainOptimizer([p], sgd_plain(), lr=0.1)
    scheduler = make_scheduler(opt)
    for _ in range(4):
        lr = opt.param_groups[0]["lr"]
        before = p.detach().clone()
        p.grad = torch.ones(4)
        opt.step()
        torch.testing.assert_close(before - p, torch.full((4,), lr))
        scheduler.step()
    assert opt.param_groups[0]["lr"] < 0.1


def test_closure_is_called_with_grad_enabled_and_its_loss_returned() -> None:
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = ChainOptimizer([w], sgd_plain(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    torch.testing.assert_close(w, torch.tensor([0.8, -1.6]))


def test_bare_tensors_of_every_rank_with_an_elementwise_recipe() -> None:
    params = [
        torch.randn(s, requires_grad=True) for s in [(), (5,), (4, 3), (2, 3, 4), (2, 3, 3, 3)]
    ]
    opt = orthoptim.build("adamw", params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert all(opt.state[p]["step"].item() == 1 for p in params)


class ThreeD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.Parameter(torch.randn(4, 6, 5))
        self.conv = nn.Conv2d(3, 8, 3)
        self.scale = nn.Parameter(torch.ones(()))


def test_all_ranks_route_sensibly() -> None:
    model = ThreeD()
    assert orthoptim.classify(model) == {
        "experts": "hidden",
        "conv.weight": "hidden",
        "conv.bias": "vector",
        "scale": "vector",
    }
    opt = orthoptim.build("muon", model, compute_dtype="float32")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    # The 3-D and 4-D parameters are orthogonalised as their (4, 30) and (8, 27) matrix views:
    # the update's singular values lie in keller_quintic's measured band (scale 1: wide views).
    low, high = orthoptim.functional.get_preset("keller_quintic").band
    for name, rows in (("experts", 4), ("conv.weight", 8)):
        p = dict(model.named_parameters())[name]
        update = (before[name] - p.detach()) / opt.param_groups[0]["lr"]
        assert update.shape == p.shape
        sv = torch.linalg.svdvals(update.reshape(rows, -1))
        assert low <= sv.min() and sv.max() <= high, (name, sv)


def test_plan_needs_roles_for_bare_tensors() -> None:
    with pytest.raises(ValueError, match="routes by role"):
        ChainOptimizer(
            [torch.zeros(8, 8, requires_grad=True)],
            orthoptim.registry.get("muon").whole_model_plan(),
            lr=0.02,
        )


def test_plan_with_role_groups() -> None:
    w, b = torch.randn(8, 4, requires_grad=True), torch.zeros(8, requires_grad=True)
    opt = orthoptim.build(
        "muon", [{"params": [w], "role": "hidden"}, {"params": [b], "role": "vector"}]
    )
    assert [g["route"] for g in opt.param_groups] == ["muon", "adamw"]
    assert group_lr(opt.param_groups[1]) == pytest.approx(0.02 * 0.015)
    assert opt.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, "lr must be finite and >= 0"),
        ({"lr": math.nan}, "lr must be finite"),
        ({"lr": math.inf}, "lr must be finite"),
        ({"weight_decay": -0.1}, "weight_decay must be finite and >= 0"),
    ],
)
def test_invalid_hyperparameters_raise_value_error(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        orthoptim.build("adamw", [torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize(
    ("name", "option", "match"),
    [
        ("muon", {"momentum": 1.0}, r"momentum beta must be in \[0, 1\)"),
        ("muon", {"ns_steps": 0}, "ns_steps must be an integer >= 1"),
        ("muon", {"coeffs": "newtonschulz5"}, "coeffs must be one of"),
        ("muon", {"shape_scale": "sqrt"}, "shape_scale must be one of"),
        ("muon", {"compute_dtype": "half"}, "compute_dtype must be one of"),
        ("muon", {"pre_norm": "spectral"}, "pre_norm must be one of"),
        ("muon", {"eps": 0.0}, "eps must be finite and > 0"),
        ("adamw", {"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\)"),
        ("adamw", {"eps": -1e-8}, "eps must be finite and > 0"),
        ("sgd", {"momentum": 0.0}, "nesterov=True needs momentum > 0"),
    ],
)
def test_invalid_recipe_options_name_the_allowed_values(name, option, match) -> None:
    with pytest.raises(ValueError, match=match):
        orthoptim.build(name, nn.Linear(4, 4), **option)


def test_unknown_recipe_option_is_a_type_error_listing_allowed() -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['momentun'\]; allowed: .*momentum"):
        orthoptim.build("muon", nn.Linear(4, 4), momentun=0.9)


def test_unknown_group_key_raises() -> None:
    with pytest.raises(ValueError, match=r"unknown param group keys \['nesterov'\]"):
        ChainOptimizer([{"params": [torch.zeros(2)], "nesterov": True}], sgd_plain(), lr=0.1)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(KeyError, match="did you mean muon"):
        orthoptim.build("muonn", nn.Linear(2, 2))


def test_sparse_and_mismatched_gradients_raise_before_any_change() -> None:
    dense = torch.ones(3, 3, requires_grad=True)
    other = torch.ones(3, requires_grad=True)
    opt = orthoptim.build("adamw", [dense, other])
    dense.grad = torch.ones(3, 3)
    other.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(dense, torch.ones(3, 3)) and not opt.state
    other.grad = torch.ones(3)
    other.grad.data = torch.ones(4)  # only .data can bypass autograd's own shape check
    with pytest.raises(RuntimeError, match="does not match the parameter"):
        opt.step()
    assert torch.equal(dense, torch.ones(3, 3)) and not opt.state


def test_integer_parameters_are_refused() -> None:
    with pytest.raises(TypeError, match="real floating-point"):
        orthoptim.build("adamw", [torch.zeros(3, dtype=torch.int64)])


def test_loading_a_state_dict_from_another_optimizer_raises() -> None:
    model = nn.Linear(4, 4)
    adam = orthoptim.build("adamw", model)
    muon = orthoptim.build("muon", model)
    with pytest.raises(ValueError, match="saved by a different optimizer"):
        muon.load_state_dict(adam.state_dict())


def test_routing_overrides_by_glob() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    opt = ChainOptimizer(
        model, orthoptim.registry.get("muon").whole_model_plan(), lr=0.02, overrides={"1.*": "head"}
    )
    roles = {n: g["role"] for g in opt.param_groups for n in g["param_names"]}
    assert roles == {"0.weight": "hidden", "0.bias": "vector", "1.weight": "head", "1.bias": "head"}
    with pytest.raises(ValueError, match="matched no parameter"):
        ChainOptimizer(
            model,
            orthoptim.registry.get("muon").whole_model_plan(),
            lr=0.02,
            overrides={"decoder.*": "head"},
        )
    with pytest.raises(ValueError, match="role must be one of"):
        ChainOptimizer(
            model,
            orthoptim.registry.get("muon").whole_model_plan(),
            lr=0.02,
            overrides={"1.*": "output"},
        )


def test_build_muon_on_a_model_equals_its_whole_model_plan() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    b = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    b.load_state_dict(a.state_dict())
    plan = recipes.with_adamw(recipes.muon(), name="muon", adamw_route=MUON_ADAMW)
    opt_a, opt_b = orthoptim.build("muon", a), ChainOptimizer(b, plan, lr=0.02)
    assert opt_a.plan == opt_b.plan
    for _ in range(3):
        x = torch.randn(4, 8)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_registry_default_lr_is_used() -> None:
    opt = orthoptim.build("muon", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    assert opt.param_groups[0]["role"] == "hidden"
    assert opt.param_groups[0]["lr"] == orthoptim.registry.get("muon").lr
