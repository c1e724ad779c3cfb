"""Race your own model: ``orthoptim.bench.race`` runs the arena's protocol on any ``nn.Module``
and data a user supplies (lr sweeps with the edge rule, AdamW first and its lr for every plan's
AdamW route, seeds, installed peers, ``records.jsonl``, ``report.md`` and plots)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from orthoptim.bench.arena import sweep
from orthoptim.bench.arena.protocol import AdamWRouteRule, RaceConfig
from orthoptim.bench.arena.tasks.base import Mode, Target


@dataclass(frozen=True, slots=True, kw_only=True)
class UserTask:
    """A race task made of a user's functions (``orthoptim.bench.arena.tasks.base.Task``).

    ``model_fn()`` is called after ``torch.manual_seed(seed)``, so its initialisation follows
    the run's seed; ``batches_fn(seed)`` yields training batches; ``loss_fn(model, batch)``
    returns the scalar training loss; ``evaluate_fn(model)`` returns held-out metrics, among them
    ``target.metric`` and ``select_metric``.
    """

    name: str
    steps: int
    eval_every: int
    target: Target
    select_metric: str
    model_fn: Callable[[], nn.Module] = field(repr=False)
    batches_fn: Callable[[int], Iterator[Any]] = field(repr=False)
    loss_fn: Callable[[nn.Module, Any], Tensor] = field(repr=False)
    evaluate_fn: Callable[[nn.Module], Mapping[str, float]] = field(repr=False)

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return self.model_fn()

    def batches(self, seed: int) -> Iterator[Any]:
        return iter(self.batches_fn(seed))

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        return self.loss_fn(model, batch)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in self.evaluate_fn(model).items()}
        model.train(was_training)
        missing = {self.target.metric, self.select_metric} - set(metrics)
        if missing:
            raise ValueError(f"evaluate_fn must return {sorted(missing)}; got {sorted(metrics)}")
        return metrics

    def describe(self) -> dict[str, Any]:
        model = self.model(0)
        params = sum(p.numel() for p in model.parameters())
        return {
            "name": self.name,
            "steps": self.steps,
            "eval_every": self.eval_every,
            "target": self.target.as_dict(),
            "select_metric": self.select_metric,
            "model": f"{type(model).__name__} ({params:,} parameters)",
            "source": "user-supplied (orthoptim.bench.race)",
        }


def race(
    model_fn: Callable[[], nn.Module],
    batches_fn: Callable[[int], Iterator[Any]],
    evaluate_fn: Callable[[nn.Module], Mapping[str, float]],
    *,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    target: tuple[str, float, Mode] | Target,
    steps: int,
    eval_every: int = 10,
    select_metric: str | None = None,
    specs: Sequence[str] | None = None,
    name: str = "custom",
    peers: bool = True,
    lr_points: int = 5,
    lr_span: float = 8.0,
    seeds: int = 3,
    adamw_route: AdamWRouteRule = "tuned",
    out: Path | str | None = None,
    progress: bool = True,
    threads: int | None = 1,
) -> Path:
    # Over 60 lines only by its keyword arguments and their documentation (the body is 20).
    """Race optimizers on your own model and data with the arena's protocol; returns the
    output folder (``records.jsonl``, ``report.md``, plots), as ``orthoptim race`` does.

    Args:
        model_fn: builds a fresh model (called after seeding torch with the run's seed).
        batches_fn: ``batches_fn(seed)`` -> an iterator of training batches.
        evaluate_fn: ``evaluate_fn(model)`` -> held-out metrics (run under ``no_grad`` in eval
            mode); must include ``target``'s metric and ``select_metric``.
        loss_fn: ``loss_fn(model, batch)`` -> the scalar training loss.
        target: ``(metric, value, "min" | "max")``: time to target is measured to it.
        steps: training steps per run.
        eval_every: steps between evaluations (the target is checked there).
        select_metric: lower-is-better metric the lr sweep picks by; the target's metric when
            its mode is ``"min"``, required otherwise.
        specs: registry name patterns (default: every optimizer); AdamW always races.
        name: the task's name in records and report.
        peers: race installed peers (torch.optim, heavyball, pytorch-optimizer).
        lr_points, lr_span, seeds, adamw_route: the protocol (``orthoptim.bench.arena.protocol``).
        out: output folder (``runs/<timestamp>`` by default).
        progress: show a progress bar.
        threads: torch CPU threads during the race (``None``: leave as is).
    """
    goal, select_metric = _goal(target, select_metric)
    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1, got {steps} and {eval_every}")
    task = UserTask(
        name=name,
        steps=steps,
        eval_every=eval_every,
        target=goal,
        select_metric=select_metric,
        model_fn=model_fn,
        batches_fn=batches_fn,
        loss_fn=loss_fn,
        evaluate_fn=evaluate_fn,
    )
    config = RaceConfig(
        tasks=(name,),
        specs=None if specs is None else tuple(specs),
        peers=peers,
        lr_points=lr_points,
        lr_span=lr_span,
        seeds=seeds,
        adamw_route=adamw_route,
        out=None if out is None else Path(out),
        progress=progress,
        threads=threads,
        command=f"orthoptim.bench.race(..., name={name!r}, steps={steps}, specs={specs!r})",
    )
    return sweep.run_race([task], config)


def _goal(
    target: tuple[str, float, Mode] | Target, select_metric: str | None
) -> tuple[Target, str]:
    """The target, and the metric the lr sweep picks by (the target's, when it is minimised)."""
    goal = target if isinstance(target, Target) else Target(*target)
    if select_metric is None:
        if goal.mode != "min":
            raise ValueError(
                f"target {goal.metric!r} is maximised; give select_metric, a held-out metric "
                "where lower is better (e.g. a validation loss), for the lr sweep to pick by"
            )
        select_metric = goal.metric
    return goal, select_metric
