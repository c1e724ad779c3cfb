"""torch.optim conventions users rely on: routing corrections through ``build``, named
parameters, live momentum / betas for schedulers, duplicate parameters, tensor lrs,
``add_param_group`` on a model-built optimizer, meta-device steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import orthoptim


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))


def roles_of(opt: orthoptim.ChainOptimizer) -> dict[str, str]:
    return {n: g["role"] for g in opt.param_groups for n in g["param_names"]}


def test_build_takes_overrides_head_names_and_named_parameters() -> None:
    model = mlp()
    opt = orthoptim.build("muon", model, overrides={"3.weight": "hidden"})
    assert roles_of(opt)["3.weight"] == "hidden"
    opt = orthoptim.build("muon", model, head_names=("1",))
    assert roles_of(opt)["1.weight"] == "head"
    named = orthoptim.build("muon", model.named_parameters())
    assert roles_of(named) == {
        "0.weight": "hidden",  # names alone: no "emb" in "0"; pass the model or an override
        "1.weight": "hidden",
        "3.weight": "hidden",
        "1.bias": "vector",
        "3.bias": "vector",
    }
    named = orthoptim.build(
        "muon", model.named_parameters(), overrides={"0.weight": "embedding", "3.*": "head"}
    )
    assert roles_of(named)["0.weight"] == "embedding"
    assert roles_of(named)["3.weight"] == "head"


def test_wrong_overrides_name_the_culprit() -> None:
    with pytest.raises(ValueError, match=r"matched no parameter: \['decoder\.\*'\]"):
        orthoptim.build("muon", mlp(), overrides={"decoder.*": "head"})
    with pytest.raises(ValueError, match="role must be one of"):
        orthoptim.build("muon", mlp(), overrides={"1.weight": "output"})
    with pytest.raises(ValueError, match=r"pass the nn\.Module"):
        orthoptim.build("adamw", list(mlp().parameters()), overrides={"1.weight": "head"})


@pytest.mark.parametrize("scheduler", ["onecycle", "cyclic"])
@pytest.mark.parametrize("name", ["muon", "adamw", "normuon", "soap"])
def test_momentum_cycling_schedulers_drive_the_moments(scheduler: str, name: str) -> None:
    model = mlp()
    opt = orthoptim.build(name, model)
    if scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=20)
    else:
        sched = torch.optim.lr_scheduler.CyclicLR(opt, 1e-4, 1e-2, step_size_up=5)
    key = opt.moment_key
    assert key in opt.defaults

    def first() -> float:
        value = opt.param_groups[0][key]
        return value if key == "momentum" else value[0]

    start = first()
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
    assert first() != start


def test_a_group_momentum_is_what_the_step_uses() -> None:
    """Setting the group's momentum equals building with it; checkpoints keep it."""
    torch.manual_seed(0)
    grads = [torch.randn(16, 8) for _ in range(3)]

    def run(build_momentum: float, group_momentum: float | None) -> torch.Tensor:
        model = nn.Sequential(nn.Linear(8, 16, bias=False))
        with torch.no_grad():
            model[0].weight.fill_(0.1)
        opt = orthoptim.build("muon", model, momentum=build_momentum, overrides={"*": "hidden"})
        if group_momentum is not None:
            opt.param_groups[0]["momentum"] = group_momentum
        for g in grads:
            model[0].weight.grad = g.clone()
            opt.step()
        assert opt.state_dict()["param_groups"][0]["momentum"] == (group_momentum or build_momentum)
        return model[0].weight.detach().clone()

    assert torch.equal(run(0.95, 0.8), run(0.8, None))
    assert not torch.equal(run(0.95, None), run(0.8, None))
    with pytest.raises(ValueError, match="momentum beta"):
        run(0.95, 1.5)


def test_a_duplicate_parameter_in_one_group_raises() -> None:
    w = nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="appears twice in one param group"):
        orthoptim.build("adamw", [w, w])


def test_a_tensor_lr_is_accepted() -> None:
    model = mlp()
    opt = orthoptim.build("adamw", model, lr=torch.tensor(1e-3))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    with pytest.raises(ValueError, match="one-element tensor"):
        orthoptim.build("adamw", model, lr=torch.tensor([1e-3, 2e-3]))


def test_add_param_group_on_a_model_built_optimizer() -> None:
    model = mlp()
    opt = orthoptim.build("muon", model)
    extra = nn.Linear(4, 4)
    opt.add_param_group({"params": [extra.weight], "role": "hidden"})
    opt.add_param_group({"params": [("extra.bias", extra.bias)], "role": "vector"})
    assert opt.param_groups[-2]["route"] == "muon"
    assert opt.param_groups[-1]["param_names"] == ["extra.bias"]
    with pytest.raises(TypeError, match="all tensors or all"):
        opt.add_param_group({"params": [("x", torch.zeros(2)), torch.zeros(2)], "role": "vector"})
    for p in list(model.parameters()) + list(extra.parameters()):
        p.grad = torch.randn_like(p)
    opt.step()
    assert "extra.bias" in opt.describe()


def test_a_meta_model_steps() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = orthoptim.build("muon", model)
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt.step()
    assert all(s["step"].item() == 1 for s in opt.state.values())
