"""Roles, param groups and the routing table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim.bench.models import SmallCNN, TinyGPT
from orthoptim.groups import describe, param_groups
from orthoptim.recipes import Plan, Route, adamw, muon
from orthoptim.recipes.plan import group_lr
from orthoptim.registry import get
from orthoptim.routing import classify


def test_tiny_gpt_roles() -> None:
    roles = classify(TinyGPT(depth=1))
    assert roles["tok_emb.weight"] == roles["pos_emb.weight"] == "embedding"
    assert roles["lm_head.weight"] == "head"
    assert roles["blocks.0.qkv.weight"] == roles["blocks.0.fc_proj.weight"] == "hidden"
    assert roles["blocks.0.norm1.weight"] == roles["blocks.0.fc.bias"] == "vector"


def test_a_tied_head_is_routed_once_as_the_embedding() -> None:
    model = TinyGPT(depth=1)
    model.lm_head.weight = model.tok_emb.weight
    roles = classify(model)
    assert "lm_head.weight" not in roles
    assert roles["tok_emb.weight"] == "embedding"
    opt = orthoptim.build("muon", model)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_cnn_roles() -> None:
    roles = classify(SmallCNN())
    assert roles["conv1.weight"] == roles["conv2.weight"] == "hidden"
    assert roles["classifier.weight"] == "head"
    assert roles["norm.weight"] == "vector"


def test_head_names_are_configurable() -> None:
    model = nn.Sequential()
    model.add_module("readout", nn.Linear(4, 2))
    model.add_module("proj", nn.Linear(2, 2))
    assert classify(model)["readout.weight"] == "hidden"
    roles = classify(model, head_names=("readout",))
    assert roles["readout.weight"] == "head"
    assert roles["proj.weight"] == "hidden"  # a named head turns the last-Linear rule off


def test_without_a_named_head_the_last_linear_is_the_head() -> None:
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 10))
    assert classify(model) == {
        "0.weight": "hidden",
        "0.bias": "vector",
        "2.weight": "head",
        "2.bias": "vector",
    }


def test_param_groups_one_per_role_with_route_lr_and_wd() -> None:
    model = TinyGPT(depth=1)
    plan = get("muon").whole_model_plan()
    groups = param_groups(
        list(model.named_parameters()), classify(model), plan, lr=0.02, weight_decay=0.1
    )
    assert [g["role"] for g in groups] == ["hidden", "embedding", "head", "vector"]
    assert [g["route"] for g in groups] == ["muon", "adamw", "adamw", "adamw"]
    assert groups[0]["lr"] == 0.02 and groups[0]["weight_decay"] == 0.1
    assert groups[1]["lr"] == 0.02 and groups[1]["lr_scale"] == pytest.approx(0.015)
    assert group_lr(groups[1]) == pytest.approx(0.02 * 0.015) and groups[1]["weight_decay"] == 0.0
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


def test_describe_lists_every_parameter() -> None:
    opt = orthoptim.build("muon", TinyGPT(depth=1))
    table = describe(opt.param_groups, opt.plan)
    lines = table.splitlines()
    assert lines[0].split() == ["parameter", "shape", "role", "route", "chain", "lr", "wd"]
    assert len(lines) == 2 + sum(len(g["params"]) for g in opt.param_groups)
    assert any(line.startswith("tok_emb.weight") and "embedding" in line for line in lines)


def test_plans_must_cover_every_role_once() -> None:
    with pytest.raises(ValueError, match=r"missing \['embedding', 'head', 'vector'\]"):
        Plan((Route(name="m", chain=muon(), roles=("hidden",)),))
    with pytest.raises(ValueError, match=r"repeated \['hidden'\]"):
        Plan((Route(name="a", chain=muon()), Route(name="b", chain=adamw(), roles=("hidden",))))
    with pytest.raises(ValueError, match="role must be one of"):
        Route(name="x", chain=adamw(), roles=("bias",))


def test_route_lookup_errors() -> None:
    plan = get("muon").whole_model_plan()
    with pytest.raises(ValueError, match="unknown role"):
        plan.route_for("bias")
    with pytest.raises(KeyError, match="no route"):
        plan.route_named("sgd")
    with pytest.raises(ValueError, match="no route"):
        orthoptim.ChainOptimizer([{"params": [torch.zeros(2, 2)], "route": "sgd"}], plan, lr=0.1)
