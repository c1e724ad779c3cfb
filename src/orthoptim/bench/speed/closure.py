"""The closure section of ``orthoptim speed``: optimizers that need ``step(closure)``, timed as a
whole training step beside AdamW's.

The step-only table cannot time them: their step evaluates the loss and gradients again (exact
MARS at the previous parameters, PSGD's Hessian-vector products by a double backward, the
gradient estimators of SAM-like and zeroth-order methods), so the forward and backward passes
are part of what they cost. Here each one runs ``opt.step(closure)`` on a small fixed MLP and
batch, and AdamW runs its plain ``zero_grad``, forward, ``backward``, ``step`` on its own copy of
the same model and batch, interleaved round by round in one process (medians after warm-up).

Passes are measured, not declared: a forward hook on the model counts forward passes, and a
multi-gradient hook over the model's parameters (``torch.autograd.graph.register_multi_grad_hook``,
``mode="any"``: once per backward pass, double backwards included) counts backward passes;
``closure()`` calls are counted by the closure itself. All three are reported per step (means
over the timed steps: a probe schedule may skip some).

Who is timed: every registered optimizer whose default plan ``needs_closure``, and the closure
variants of others (``CLOSURE_VARIANTS``), kept by ``--spec`` with their base name. The closure
calls ``backward`` with ``create_graph=True`` where a route reads Hessian-vector products or the
plan's gradient estimator ``needs_graph``, and not at all where the estimator's closure returns
the loss without backward (``closure_backward`` False, zeroth-order methods).
"""

from __future__ import annotations

import copy
import itertools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orthoptim import registry
from orthoptim.hvp import double_backward_attention

# Closure-based variants of registered optimizers, timed beside the registry's closure users.
CLOSURE_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mars_adamw", {"variant": "exact"}),
    ("psgd_kron", {"curvature": "hvp"}),
    ("psgd_lra", {"curvature": "hvp"}),
)
# Closure users timed at other than their defaults: deepzero estimates every kept coordinate
# with one forward pass each (about 210,000 on this MLP at sparsity 0.9), so it is timed on 64
# coordinates a step (its step costs 1 + K forward passes for K coordinates).
TIMED_AT: dict[str, dict[str, Any]] = {"deepzero": {"coordinates_per_step": 64}}
# The MLP: widths of the benchmark's MLP matrices (512 -> 2048 -> 512, its 2048x512 and
# 512x2048 weights), a batch of 64 rows.
WIDTHS: tuple[int, ...] = (512, 2048, 512)
BATCH = 64


@dataclass(slots=True)
class ClosureRow:
    """One timed optimizer: its step (with the closure) beside AdamW's plain step."""

    name: str
    options: dict[str, Any]
    times_s: list[float] = field(default_factory=list)
    forward: list[int] = field(default_factory=list)
    backward: list[int] = field(default_factory=list)
    closure_calls: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({shown})" if shown else self.name

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.times_s) if self.times_s else float("nan")

    def per_step(self, counts: list[int]) -> float:
        return sum(counts) / len(counts) if counts else float("nan")


def closure_entrants(specs: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(name, options)`` of every registered optimizer that needs a closure at its defaults,
    then of ``CLOSURE_VARIANTS`` whose base is registered; only bases in ``specs`` if given."""
    names = registry.names()
    out: list[tuple[str, dict[str, Any]]] = [
        (n, dict(TIMED_AT.get(n, {}))) for n in names if registry.get(n).needs_closure
    ]
    out += [(base, dict(opts)) for base, opts in CLOSURE_VARIANTS if base in names]
    return [e for e in out if specs is None or e[0] in specs]


def closure_flags(opt: Any) -> tuple[bool, bool]:
    """``(create_graph, backward)``: how ``opt``'s closure must differentiate the loss
    (``Plan.needs_graph``, ``Plan.closure_backward``; the module docstring)."""
    return opt.plan.needs_graph, opt.plan.closure_backward


class Counted:
    """A model, batch and loss with the passes counted (module docstring); ``closure(opt)``
    builds the closure ``opt.step`` takes, ``plain_step(opt)`` is AdamW's step."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.forward = self.backward = self.calls = 0
        model.register_forward_hook(self._count_forward)
        torch.autograd.graph.register_multi_grad_hook(
            list(model.parameters()), self._count_backward, mode="any"
        )

    def _count_forward(self, *_: Any) -> None:
        self.forward += 1

    def _count_backward(self, _: Any) -> None:
        self.backward += 1

    def reset(self) -> None:
        self.forward = self.backward = self.calls = 0

    def loss(self) -> torch.Tensor:
        return nn.functional.mse_loss(self.model(self.x), self.y)

    def closure(self, opt: Any) -> Callable[[], torch.Tensor]:
        create_graph, backward = closure_flags(opt)

        def closure() -> torch.Tensor:
            self.calls += 1
            opt.zero_grad()
            with double_backward_attention(create_graph):  # as the race's closure
                loss = self.loss()
            if backward:
                loss.backward(create_graph=create_graph)
            return loss

        return closure

    def plain_step(self, opt: Any) -> None:
        opt.zero_grad()
        self.loss().backward()
        opt.step()


def mlp(widths: Sequence[int] = WIDTHS, seed: int = 0) -> nn.Module:
    """The fixed MLP (tanh between layers, biases on)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def run_section(
    chosen: Sequence[tuple[str, dict[str, Any]]],
    *,
    warmup: int = 2,
    steps: int = 5,
    widths: Sequence[int] = WIDTHS,
    batch: int = BATCH,
) -> tuple[ClosureRow, list[ClosureRow]]:
    """AdamW's row and one row per ``(name, options)`` of ``chosen``, timed in interleaved rounds
    on copies of one model and batch (an optimizer that cannot be built or stepped keeps its
    error and drops out of the rounds)."""
    base = mlp(widths)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, widths[0], generator=gen)
    y = torch.randn(batch, widths[-1], generator=gen)
    adamw = ClosureRow("adamw", {})
    rows = [ClosureRow(name, dict(options)) for name, options in chosen]
    runners: list[tuple[ClosureRow, Counted, Callable[[], Any]]] = []
    for row in [adamw, *rows]:
        counted = Counted(copy.deepcopy(base), x, y)
        try:
            opt = registry.build(row.name, counted.model, **row.options)
            if row is adamw:
                step: Callable[[], Any] = _bind(counted.plain_step, opt)
            else:
                step = _bind(opt.step, counted.closure(opt))
        except Exception as err:  # reported in the table, as the step-only benchmark does
            row.error = f"{type(err).__name__}: {err}"
            continue
        runners.append((row, counted, step))
    for round_ in range(warmup + steps):
        for row, counted, step in runners:
            if row.error is not None:
                continue
            counted.reset()
            try:
                start = time.perf_counter()
                step()
                elapsed = time.perf_counter() - start
            except Exception as err:
                row.error = f"{type(err).__name__}: {err}"
                continue
            if round_ >= warmup:
                row.times_s.append(elapsed)
                row.forward.append(counted.forward)
                row.backward.append(counted.backward)
                row.closure_calls.append(counted.calls)
    return adamw, rows


def _bind(fn: Callable[[Any], Any], arg: Any) -> Callable[[], Any]:
    return lambda: fn(arg)


def render(adamw: ClosureRow, rows: Sequence[ClosureRow], widths: Sequence[int]) -> str:
    """The section's table: per optimizer its whole step, the ratio to AdamW's plain step, and
    the passes measured per step."""
    shape = " -> ".join(str(w) for w in widths)
    lines = [
        f"closure optimizers: whole training step (forward + backward(s) + step) on an MLP "
        f"{shape}, beside AdamW's forward + backward + step (median ms; passes per step "
        f"measured by hooks)",
        f"{'optimizer':<40} {'ms':>9} {'x adamw':>8} {'forward':>8} {'backward':>9} {'closure':>8}",
    ]
    for row in [adamw, *rows]:
        if row.error is not None:
            lines.append(f"{row.label:<40} error: {row.error}")
            continue
        ratio = row.median_ms / adamw.median_ms if adamw.times_s else float("nan")
        lines.append(
            f"{row.label:<40} {row.median_ms:>9.2f} {ratio:>8.2f} "
            f"{row.per_step(row.forward):>8.2f} {row.per_step(row.backward):>9.2f} "
            f"{row.per_step(row.closure_calls):>8.2f}"
        )
    return "\n".join(lines)


def write(adamw: ClosureRow, rows: Sequence[ClosureRow], path: Path) -> None:
    """One JSON line per row (``closure.jsonl`` beside the step-only ``records.jsonl``)."""
    with path.open("a", encoding="utf-8") as f:
        for row in [adamw, *rows]:
            record = asdict(row) | {
                "kind": "speed_closure",
                "label": row.label,
                "median_ms": row.median_ms if row.times_s else None,
                "ratio_adamw": (
                    row.median_ms / adamw.median_ms if row.times_s and adamw.times_s else None
                ),
                "forward_per_step": row.per_step(row.forward) if row.forward else None,
                "backward_per_step": row.per_step(row.backward) if row.backward else None,
            }
            f.write(json.dumps(record, default=repr) + "\n")
