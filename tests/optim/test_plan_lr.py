"""The AdamW route's lr: absolute (``adamw_lr``) or relative (``adamw_lr_scale``), checked at
build, applied by the step, and kept relative to the matrix lr by every torch scheduler."""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched

import orthoptim
from orthoptim.bench.models import TinyGPT
from orthoptim.recipes.plan import group_lr

LR, ADAMW_LR = 0.02, 8e-3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return TinyGPT(vocab=32, dim=16, depth=1, heads=2, context=8)


def _lrs(opt: orthoptim.ChainOptimizer) -> dict[str, float]:
    """The lr each route's step uses now (one value per route)."""
    out: dict[str, float] = {}
    for group in opt.param_groups:
        lr = group_lr(group)
        assert out.setdefault(group["route"], lr) == pytest.approx(lr)
    return out


def _train_step(model: nn.Module, opt: Any) -> None:
    opt.zero_grad()
    idx = torch.randint(0, 32, (4, 8))
    model(idx).logsumexp(-1).mean().backward()
    opt.step()


def test_adamw_lr_is_absolute_and_adamw_lr_scale_relative() -> None:
    opt = orthoptim.build("muon", _model(), lr=LR, adamw_lr=ADAMW_LR)
    assert _lrs(opt) == {"muon": pytest.approx(LR), "adamw": pytest.approx(ADAMW_LR)}
    assert all(g["lr"] == LR for g in opt.param_groups)  # schedulers see one lr
    assert "0.008" in opt.describe() and "lr 0.008" in opt.explain()
    opt = orthoptim.build("muon", _model(), lr=LR, adamw_lr_scale=0.5)
    assert _lrs(opt) == {"muon": pytest.approx(LR), "adamw": pytest.approx(LR * 0.5)}
    default = orthoptim.build("muon", _model(), lr=LR)  # the published pairing, 0.015
    assert _lrs(default)["adamw"] == pytest.approx(LR * 0.015)


def test_the_step_uses_the_route_lr() -> None:
    """Adam's first step moves every entry with a gradient by exactly its lr (m/sqrt(v) = +-1),
    so the change of the head shows the lr the step applied."""
    model = _model()
    opt = orthoptim.build("muon", model, lr=LR, adamw_lr=ADAMW_LR, adamw_eps=1e-30)
    before = model.lm_head.weight.detach().clone()
    _train_step(model, opt)
    moved = (model.lm_head.weight.detach() - before).abs()
    assert moved.max().item() == pytest.approx(ADAMW_LR, rel=1e-5)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"adamw_lr": 1e-3, "adamw_lr_scale": 0.1}, "not both"),
        ({"adamw_lr": 0.0}, "adamw_lr|lr must be"),
        ({"adamw_lr": -1.0}, "lr must be"),
        ({"adamw_lr": math.nan}, "lr must be"),
        ({"adamw_lr_scale": math.inf}, "lr_scale must be"),
    ],
)
def test_bad_adamw_lr_is_a_clear_error(options: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        orthoptim.build("muon", _model(), **options)


def test_adamw_lr_needs_a_positive_matrix_lr() -> None:
    with pytest.raises(ValueError, match="needs a positive lr"):
        orthoptim.build("muon", _model(), lr=0.0, adamw_lr=1e-3)


def test_plan_options_need_a_plan() -> None:
    w = torch.zeros(4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="AdamW route"):
        orthoptim.build("muon", [w], adamw_lr=1e-3)
    with pytest.raises(TypeError, match="unknown option"):
        orthoptim.build("adamw", _model(), adamw_lr=1e-3)


def test_removed_adamw_names_point_to_the_plan() -> None:
    with pytest.raises(KeyError, match=r"build\('normuon', model\) brings AdamW"):
        orthoptim.build("normuon_adamw", _model())


def test_user_groups_with_their_own_lr_run_at_it() -> None:
    w, b = torch.randn(8, 4, requires_grad=True), torch.zeros(8, requires_grad=True)
    opt = orthoptim.build(
        "muon",
        [{"params": [w], "role": "hidden"}, {"params": [b], "role": "vector", "lr": 0.1}],
        adamw_lr=ADAMW_LR,
    )
    assert [group_lr(g) for g in opt.param_groups] == [pytest.approx(0.02), pytest.approx(0.1)]


def test_state_dict_keeps_the_ratio_and_old_checkpoints_load() -> None:
    model = _model()
    opt = orthoptim.build("muon", model, lr=LR, adamw_lr=ADAMW_LR)
    _train_step(model, opt)
    saved = copy.deepcopy(opt.state_dict())
    fresh = orthoptim.build("muon", model, lr=LR)  # the default ratio, replaced by the saved one
    fresh.load_state_dict(saved)
    assert _lrs(fresh) == _lrs(opt)
    # A checkpoint from before lr_scale existed held each group's absolute lr: it still runs
    # at that lr.
    for group in saved["param_groups"]:
        group["lr"] = group_lr(group)
        del group["lr_scale"]
    fresh.load_state_dict(saved)
    assert _lrs(fresh) == _lrs(opt)
    assert _lrs(copy.deepcopy(opt)) == _lrs(opt)


def _schedulers() -> dict[type, Callable[[torch.optim.Optimizer], Any]]:
    """One realistic construction of every scheduler in ``torch.optim.lr_scheduler``, with the
    absolute values users pass (``max_lr``, ``eta_min``, ``base_lr``, ``min_lr``)."""
    return {
        sched.LambdaLR: lambda o: sched.LambdaLR(o, lambda s: 1 / (1 + s)),
        sched.MultiplicativeLR: lambda o: sched.MultiplicativeLR(o, lambda s: 0.9),
        sched.StepLR: lambda o: sched.StepLR(o, step_size=3, gamma=0.5),
        sched.MultiStepLR: lambda o: sched.MultiStepLR(o, milestones=[2, 5], gamma=0.3),
        sched.ConstantLR: lambda o: sched.ConstantLR(o, factor=0.5, total_iters=4),
        sched.LinearLR: lambda o: sched.LinearLR(o, start_factor=0.1, total_iters=5),
        sched.ExponentialLR: lambda o: sched.ExponentialLR(o, gamma=0.8),
        sched.PolynomialLR: lambda o: sched.PolynomialLR(o, total_iters=8, power=2.0),
        sched.CosineAnnealingLR: lambda o: sched.CosineAnnealingLR(o, T_max=6, eta_min=1e-3),
        sched.CosineAnnealingWarmRestarts: lambda o: sched.CosineAnnealingWarmRestarts(
            o, T_0=3, eta_min=1e-3
        ),
        sched.CyclicLR: lambda o: sched.CyclicLR(
            o, base_lr=1e-3, max_lr=0.02, step_size_up=3, cycle_momentum=False
        ),
        sched.OneCycleLR: lambda o: sched.OneCycleLR(
            o, max_lr=0.02, total_steps=12, cycle_momentum=False
        ),
        sched.ReduceLROnPlateau: lambda o: sched.ReduceLROnPlateau(
            o, patience=0, factor=0.5, min_lr=1e-3
        ),
        sched.SequentialLR: lambda o: sched.SequentialLR(
            o,
            [sched.LinearLR(o, start_factor=0.1, total_iters=3), sched.ExponentialLR(o, 0.9)],
            milestones=[3],
        ),
        sched.ChainedScheduler: lambda o: sched.ChainedScheduler(
            [sched.ExponentialLR(o, 0.9), sched.CosineAnnealingLR(o, T_max=6, eta_min=1e-3)]
        ),
    }


def test_every_torch_scheduler_is_covered() -> None:
    public = {
        cls
        for name, cls in inspect.getmembers(sched, inspect.isclass)
        if cls.__module__ == sched.__name__
        and not name.startswith("_")
        and name != "LRScheduler"
        and (issubclass(cls, sched.LRScheduler) or cls is sched.ReduceLROnPlateau)
    }
    assert public == set(_schedulers())


@pytest.mark.parametrize("cls", list(_schedulers()), ids=lambda cls: cls.__name__)
def test_schedulers_keep_the_routes_relation(cls: type) -> None:
    make = _schedulers()[cls]
    model = _model()
    opt = orthoptim.build("muon", model, lr=LR, adamw_lr=ADAMW_LR)
    scheduler = make(opt)
    seen = set()
    for step in range(12):
        lrs = _lrs(opt)
        assert lrs["adamw"] == pytest.approx(lrs["muon"] * ADAMW_LR / LR, rel=1e-9), step
        seen.add(round(lrs["muon"], 12))
        _train_step(model, opt)
        if isinstance(scheduler, sched.ReduceLROnPlateau):
            scheduler.step(1.0)  # never improves: the lr drops to min_lr
        else:
            scheduler.step()
    assert len(seen) > 1  # the schedule moved the lr
