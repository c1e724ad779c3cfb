"""One run: a task, a racer, an lr and a seed, measured into one record.

Timing uses ``perf_counter`` around each training step (``zero_grad``, forward, backward,
optimizer step); the optimizer step is timed on its own as well. Evaluation is excluded from
every time, so wall-time-to-target is training time only. The optimizer state is measured
exactly (bytes of every state tensor after the last step); peak RSS is the process's high-water
mark during the run (``VmHWM``, reset before the run where Linux allows it).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from orthoptim.bench.arena.flops import model_step_flops, optimizer_step_flops
from orthoptim.bench.arena.racers import Racer, configuration, state_bytes
from orthoptim.bench.arena.tasks.base import Task
from orthoptim.bench.shared.memory import peak_rss_bytes, reset_peak_rss, status_kib
from orthoptim.hvp import double_backward_attention
from orthoptim.nonfinite import NonFiniteGradientError

Progress = Callable[[int, float], None]
"""``progress(step, train_loss)``, called after every training step."""


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (tasks draw from their own generators too)."""
    random.seed(seed)
    torch.manual_seed(seed)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def train_step(
    task: Task, racer: Racer, model: torch.nn.Module, opt: Any, batch: Any
) -> tuple[float, float, float]:
    """One training step: ``(loss, whole step seconds, optimizer step seconds)``.

    The loss is NaN when the step was refused: a non-finite loss (the optimizer is not
    stepped) or orthoptim's ``NonFiniteGradientError``. A racer that ``needs_closure`` computes
    its gradients inside ``step``, so its optimizer time includes forward and backward.
    """
    t0 = time.perf_counter()
    if racer.needs_closure:

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            with double_backward_attention(racer.closure_graph):
                value = task.loss(model, batch)
            if racer.closure_backward:
                value.backward(create_graph=racer.closure_graph)
            return value

        t1 = t0
        try:
            loss = opt.step(closure)
        except NonFiniteGradientError:
            return math.nan, 0.0, 0.0
    else:
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, batch)
        loss.backward()
        if not math.isfinite(loss.item()):
            return math.nan, 0.0, 0.0
        t1 = time.perf_counter()
        try:
            opt.step()
        except NonFiniteGradientError:  # orthoptim refuses NaN/Inf gradients by default
            return math.nan, 0.0, 0.0
    t2 = time.perf_counter()
    return float(loss.item()), t2 - t0, t2 - t1


def run(
    task: Task,
    racer: Racer,
    lr: float,
    seed: int,
    *,
    adamw_lr: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``task`` with ``racer`` at ``lr`` (and its AdamW route at ``adamw_lr``) from
    ``seed``; the measured part of a record.

    Returns ``recipe`` (exact configuration), ``curve`` (step 0 and every ``eval_every`` steps:
    training time so far, mean training loss since the last point, validation metrics),
    ``final``, ``steps_to_target`` / ``time_to_target_s`` (first evaluation meeting the target;
    ``None`` if never), ``diverged``, ``timing``, ``flops`` (per training step, model and
    optimizer: ``orthoptim.bench.arena.flops``) and ``memory``. A non-finite training loss stops
    the run and marks it diverged.
    """
    seed_everything(seed)
    model = task.model(seed)
    model.train()
    opt = racer.make(model, lr, adamw_lr)
    batches = task.batches(seed)
    reset_ok = reset_peak_rss()
    rss_start = status_kib("VmRSS")
    trace = _Trace([{"step": 0, "time_s": 0.0, "train_loss": None, **task.evaluate(model)}])
    if task.target.reached(trace.curve[0]):
        trace.steps_to_target, trace.time_to_target = 0, 0.0
    wall0 = time.perf_counter()
    _train(task, racer, model, opt, batches, trace, progress)
    wall_s = time.perf_counter() - wall0
    flops = {  # after the run, outside every timed region
        "model_step": model_step_flops(task, model, next(batches)),
        "optimizer_step": optimizer_step_flops(racer.mirrors, model),
    }
    final = {k: v for k, v in trace.curve[-1].items() if k not in ("step", "time_s", "train_loss")}
    if trace.diverged:
        final = dict.fromkeys(final)
    return {
        "recipe": configuration(opt),
        "curve": trace.curve,
        "final": final,
        "steps_done": len(trace.step_times),
        "steps_to_target": trace.steps_to_target,
        "time_to_target_s": trace.time_to_target,
        "diverged": trace.diverged,
        "timing": _timing(trace, wall_s, racer.needs_closure),
        "flops": flops,
        "memory": {
            "state_bytes": state_bytes(opt),
            "peak_rss_bytes": peak_rss_bytes(),
            "rss_start_bytes": None if rss_start is None else rss_start * 1024,
            "peak_is_per_run": reset_ok,
        },
    }


@dataclass(slots=True)
class _Trace:
    """What a run's training loop records: the curve, step times, the target, divergence."""

    curve: list[dict[str, Any]]
    step_times: list[float] = field(default_factory=list)
    opt_times: list[float] = field(default_factory=list)
    train_s: float = 0.0
    steps_to_target: int | None = None
    time_to_target: float | None = None
    diverged: bool = False


def _train(
    task: Task,
    racer: Racer,
    model: torch.nn.Module,
    opt: Any,
    batches: Any,
    trace: _Trace,
    progress: Progress | None,
) -> None:
    """The training steps, evaluated every ``eval_every``; a non-finite training loss or
    metric stops the run and marks it diverged."""
    window: list[float] = []
    for step in range(1, task.steps + 1):
        value, step_s, opt_s = train_step(task, racer, model, opt, next(batches))
        if not math.isfinite(value):
            trace.diverged = True
            break
        trace.step_times.append(step_s)
        trace.opt_times.append(opt_s)
        trace.train_s += step_s
        window.append(value)
        if progress is not None:
            progress(step, value)
        if step % task.eval_every == 0 or step == task.steps:
            metrics = task.evaluate(model)
            trace.curve.append(
                {
                    "step": step,
                    "time_s": trace.train_s,
                    "train_loss": statistics.fmean(window),
                    **{k: _finite(v) for k, v in metrics.items()},
                }
            )
            window = []
            if any(not math.isfinite(v) for v in metrics.values()):
                trace.diverged = True
                break
            if trace.steps_to_target is None and task.target.reached(metrics):
                trace.steps_to_target, trace.time_to_target = step, trace.train_s


def _timing(trace: _Trace, wall_s: float, closure: bool) -> dict[str, Any]:
    """A record's ``timing``: training and wall seconds, median step and optimizer step."""
    opt_median = statistics.median(trace.opt_times) if trace.opt_times else None
    step_median = statistics.median(trace.step_times) if trace.step_times else None
    return {
        "train_s": trace.train_s,
        "wall_s": wall_s,
        "step_s_median": step_median,
        "opt_step_s_median": opt_median,
        "opt_share": opt_median / step_median if opt_median and step_median else None,
        "opt_includes_gradients": closure,
    }
