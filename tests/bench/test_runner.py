"""One run: time-to-target bookkeeping, exact state bytes, divergence, timing fields."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from orthoptim.bench.arena import tasks
from orthoptim.bench.arena.racers import Pair, spec_racers, state_bytes
from orthoptim.bench.arena.runner import run
from orthoptim.bench.arena.tasks.base import Target
from orthoptim.bench.shared.memory import peak_rss_bytes


class Counter(nn.Module):
    """A 4x4 matrix and a step counter the task's metric reads."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4, 4))
        self.register_buffer("calls", torch.zeros(()))


@dataclass(frozen=True)
class Scripted:
    """A task whose metric is 1 / (1 + number of training steps taken): known answers."""

    name: str = "scripted"
    steps: int = 10
    eval_every: int = 2
    target: Target = field(default_factory=lambda: Target("m", 0.2, "min"))
    select_metric: str = "m"
    loss_scale: float = 1.0

    def model(self, seed: int) -> nn.Module:
        return Counter()

    def batches(self, seed: int) -> Iterator[None]:
        while True:
            yield None

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        model.calls += 1
        return self.loss_scale * model.weight.square().sum()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"m": 1 / (1 + model.calls.item())}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def racer(name: str):
    return next(r for r in spec_racers([name])[0] if r.name == name)


def test_steps_and_time_to_target_come_from_the_first_evaluation_that_meets_it() -> None:
    out = run(Scripted(), racer("adamw"), 1e-3, seed=0)
    # the metric reaches 0.2 after 4 steps; evaluations happen every 2 steps
    assert out["steps_to_target"] == 4
    at = next(p for p in out["curve"] if p["step"] == 4)
    assert out["time_to_target_s"] == at["time_s"] > 0
    assert [p["step"] for p in out["curve"]] == [0, 2, 4, 6, 8, 10]
    assert out["final"] == {"m": pytest.approx(1 / 11)}
    assert out["steps_done"] == 10 and not out["diverged"]
    times = [p["time_s"] for p in out["curve"]]
    assert times == sorted(times) and out["timing"]["train_s"] == pytest.approx(times[-1])


def test_a_target_never_met_leaves_none() -> None:
    out = run(Scripted(target=Target("m", 0.01, "min")), racer("adamw"), 1e-3, seed=0)
    assert out["steps_to_target"] is None and out["time_to_target_s"] is None


def test_state_bytes_are_exact() -> None:
    out = run(Scripted(), racer("adamw"), 1e-3, seed=0)
    # AdamW: exp_avg and exp_avg_sq (16 float32 each) and a step counter
    opt = racer("adamw").make(Counter(), 1e-3, None)
    model_state = 2 * 16 * 4
    assert model_state <= out["memory"]["state_bytes"] <= model_state + 8
    assert state_bytes(opt) == 0  # nothing before the first step
    sgd = torch.optim.SGD([nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9)
    sgd.param_groups[0]["params"][0].grad = torch.ones(3)
    sgd.step()
    assert state_bytes(Pair(sgd)) == 3 * 4


def test_a_non_finite_loss_marks_the_run_diverged() -> None:
    out = run(Scripted(loss_scale=math.inf), racer("sgd"), 1e-3, seed=0)
    assert out["diverged"] and out["steps_to_target"] is None
    assert all(v is None for v in out["final"].values())


def test_real_task_run_has_timing_memory_and_configuration() -> None:
    task = tasks.make("quadratic", quick=True)
    out = run(task, racer("muon"), 0.02, seed=1)
    timing, memory = out["timing"], out["memory"]
    assert 0 < timing["opt_step_s_median"] <= timing["step_s_median"]
    assert 0 < timing["opt_share"] <= 1
    assert memory["state_bytes"] > 0 and memory["peak_rss_bytes"] > 2**20
    recipe = out["recipe"][0]
    assert recipe["class"].endswith("ChainOptimizer") and "Orthogonalize(" in recipe["recipe"]
    assert {g["role"] for g in recipe["groups"]} == {"hidden"}
    again = run(task, racer("muon"), 0.02, seed=1)
    assert [p["rel_loss"] for p in again["curve"]] == [p["rel_loss"] for p in out["curve"]]


def test_peak_rss_is_reported() -> None:
    rss = peak_rss_bytes()
    assert rss is None or rss > 2**20


def test_flops_per_step_are_recorded_for_model_and_optimizer() -> None:
    from orthoptim.bench.arena.flops import optimizer_step_flops, training_step_flops

    task = tasks.make("lm", quick=True)
    out = run(task, racer("muon"), 0.02, seed=0)
    flops = out["flops"]
    model = task.model(0)
    hidden = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "emb" not in n)
    tokens = task.batch_size * task.context
    # forward + backward of the linear layers: at least 6 FLOPs per weight and token
    assert flops["model_step"] >= 6 * tokens * (hidden - model.lm_head.weight.numel())
    assert flops["optimizer_step"] == optimizer_step_flops("muon", model) > 0
    record = {"flops": flops, "timing": out["timing"]}
    assert training_step_flops(record) == flops["model_step"] + flops["optimizer_step"]
    adamw = optimizer_step_flops("adamw", model)
    assert adamw is not None and adamw < flops["optimizer_step"]  # no Newton-Schulz products
    assert optimizer_step_flops("not:registered", model) is None


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_a_racer_taking_hessian_vector_products_gets_a_graph_in_its_closure() -> None:
    """oasis (``Plan.needs_graph``) races with a closure calling ``backward(create_graph=True)``;
    a closure without the graph would raise in its first step (no product can be taken)."""
    oasis = racer("oasis")
    assert oasis.needs_closure and oasis.closure_graph and not racer("sgd").closure_graph
    out = run(tasks.make("digits", quick=True), oasis, 1.0, seed=0)
    assert not out["diverged"] and out["steps_done"] > 0
    assert math.isfinite(out["curve"][-1]["val_loss"])
