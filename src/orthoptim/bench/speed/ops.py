"""Host reads and kernel launches per optimizer step (``orthoptim ops``): what decides a step's
speed on a GPU, counted on any device.

On a GPU a step is slow for two reasons a CPU timing cannot show: every host read of a device
value (``.item()``, ``bool(t)``, ``tolist()``, a copy to the host) waits for every queued kernel,
and every kernel costs a launch (a few microseconds) however small its work. Both are counted
here with torch's modes while a real optimizer steps a real model:

* host reads: ``aten._local_scalar_dense`` (what ``item``, ``bool``, ``float`` and ``int`` of a
  tensor dispatch to) seen by a ``TorchDispatchMode``, plus ``tolist``, ``numpy`` and ``cpu`` seen
  by a ``TorchFunctionMode`` (they reach the data without dispatching). Reads of a step counter
  kept on the host (``state["step"]`` on the CPU while the parameter is elsewhere, as torch.optim
  keeps it without ``capturable``/``fused``) wait for nothing on a GPU: they are counted apart, as
  ``step_reads``. On a CPU-only machine every tensor is a host tensor, so these counts say what
  the same step would read from a GPU, not what it costs here.
* kernels: every dispatched aten op that computes, that is, not a view, an allocation
  (``empty``) or a host read.

Not seen: a wait inside an op's own kernel. On CUDA ``torch.linalg.eigh``, ``svd`` and
``svdvals`` check their solver's status on the host (torch's docs: they synchronize the device
with the CPU) below the dispatcher, so each call is a hidden read; batching them (M-FAC's
``eigh``) makes fewer.

The model is ``bench.models.TinyGPT`` with small dimensions (counts do not depend on sizes):
``depth=6`` has the 24 hidden matrices of ``orthoptim speed``'s default (65 tensors), and
``depth=20`` has 205 tensors. Each step runs on fresh gradients of a fixed batch. orthoptim's
optimizers run with ``foreach=True``, the path a GPU takes by default. The peer is what a torch
user runs: ``torch.optim.Muon`` on the hidden matrices (as routed for ``muon``) and
``torch.optim.AdamW(foreach=True)`` on the rest.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from orthoptim import registry
from orthoptim.bench.models import TinyGPT
from orthoptim.bench.shared.environment import environment
from orthoptim.routing import classify

_ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})
_NOT_KERNELS = frozenset({"_local_scalar_dense", "detach", "lift_fresh", "alias", "set_"})
_UNDISPATCHED_READS = frozenset({"tolist", "numpy", "cpu"})


@dataclass
class StepOps:
    """What one optimizer step dispatched (the maximum over the counted steps for reads, the
    mean for kernels)."""

    host_reads: int
    step_reads: int
    kernels: float
    by_op: dict[str, float] = field(default_factory=dict)


class _Counter(TorchDispatchMode):
    def __init__(self, host_scalars: Callable[[], set[int]]) -> None:
        super().__init__()
        self.host_scalars = host_scalars
        self.kernels: Counter[str] = Counter()
        self.reads = 0
        self.step_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense":
            if _storage(args[0]) in self.host_scalars():
                self.step_reads += 1
            else:
                self.reads += 1
        elif not (
            func.is_view or func.namespace != "aten" or name in _ALLOCATIONS or name in _NOT_KERNELS
        ):
            self.kernels[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


class _UndispatchedReads(TorchFunctionMode):
    def __init__(self, host_scalars: Callable[[], set[int]]) -> None:
        super().__init__()
        self.host_scalars = host_scalars
        self.reads = 0
        self.step_reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "__name__", "") in _UNDISPATCHED_READS and args:
            if isinstance(args[0], Tensor) and _storage(args[0]) in self.host_scalars():
                self.step_reads += 1
            else:
                self.reads += 1
        return func(*args, **(kwargs or {}))


def _storage(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _host_scalars(optimizers: Sequence[torch.optim.Optimizer], device: torch.device) -> set[int]:
    """The step counters kept on the host while their parameters are on ``device``; on a CPU
    run, every counter torch.optim would keep on the host (all but capturable or fused ones,
    which live on the parameter's device)."""
    out = set()
    for opt in optimizers:
        for group in opt.param_groups:
            on_device = bool(group.get("capturable") or group.get("fused"))
            for p in group["params"]:
                step = opt.state.get(p, {}).get("step")
                if (
                    isinstance(step, Tensor)
                    and step.device.type == "cpu"
                    and not on_device
                    and (device.type != "cpu" or p.device.type == "cpu")
                ):
                    out.add(_storage(step))
    return out


def count(
    optimizers: Sequence[torch.optim.Optimizer],
    step: Callable[[], Any],
    prepare: Callable[[], Any],
    steps: int,
) -> StepOps:
    """Count what ``step()`` dispatches over ``steps`` steps, ``prepare()`` (fresh gradients)
    before each one uncounted."""
    device = next(p.device for o in optimizers for g in o.param_groups for p in g["params"])
    reads, step_reads, kernels = 0, 0, Counter[str]()
    for _ in range(steps):
        prepare()

        # looked up at each read: a first step creates its counters while it runs
        def scalars() -> set[int]:
            return _host_scalars(optimizers, device)

        dispatched, function = _Counter(scalars), _UndispatchedReads(scalars)
        with function, dispatched:
            step()
        reads = max(reads, dispatched.reads + function.reads)
        step_reads = max(step_reads, dispatched.step_reads + function.step_reads)
        kernels.update(dispatched.kernels)
    return StepOps(
        host_reads=reads,
        step_reads=step_reads,
        kernels=sum(kernels.values()) / steps,
        by_op={k: v / steps for k, v in kernels.most_common()},
    )


# -- the model and the entrants -------------------------------------------------------------------

SETS: dict[str, int] = {"gpt24": 6, "gpt200": 20}
"""Parameter sets by TinyGPT depth: 24 hidden matrices (65 tensors), and 205 tensors."""


class Trainer:
    """A TinyGPT, a fixed batch, and ``prepare()``: zero the gradients and backpropagate."""

    def __init__(self, depth: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = TinyGPT(vocab=64, dim=32, depth=depth, heads=2, context=16)
        gen = torch.Generator().manual_seed(seed)
        self.batch = torch.randint(0, 64, (4, 16), generator=gen)

    def prepare(self) -> None:
        self.model.zero_grad(set_to_none=False)
        logits = self.model(self.batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), self.batch[:, 1:].flatten())
        loss.backward()


def torch_muon_adamw(model: nn.Module) -> list[torch.optim.Optimizer]:
    """torch's Muon on the hidden matrices (as orthoptim routes them) and foreach AdamW on the
    rest: what a torch user steps."""
    roles = classify(model)
    hidden = [p for n, p in model.named_parameters() if roles[n] == "hidden"]
    rest = [p for n, p in model.named_parameters() if roles[n] != "hidden"]
    return [torch.optim.Muon(hidden, lr=0.02), torch.optim.AdamW(rest, lr=3e-4, foreach=True)]


def _stepper(optimizers: Sequence[torch.optim.Optimizer]) -> Callable[[], None]:
    def step() -> None:
        for opt in optimizers:
            opt.step()

    return step


def _build_foreach(name: str, model: nn.Module) -> list[torch.optim.Optimizer]:
    return [registry.build(name, model, foreach=True)]


def entrants() -> list[tuple[str, Callable[[nn.Module], list[torch.optim.Optimizer]]]]:
    """Every registered optimizer that steps without a closure, then torch's."""
    out: list[tuple[str, Callable[[nn.Module], list[torch.optim.Optimizer]]]] = []
    for name in registry.names():
        if registry.get(name).needs_closure:
            continue
        out.append((f"orthoptim:{name}", functools.partial(_build_foreach, name)))
    out += [
        ("torch:muon+adamw_foreach", torch_muon_adamw),
        ("torch:adamw_foreach", lambda m: [torch.optim.AdamW(m.parameters(), foreach=True)]),
        ("torch:adamw_fused", lambda m: [torch.optim.AdamW(m.parameters(), fused=True)]),
    ]
    return out


def measure(
    name: str,
    make: Callable[[nn.Module], list[torch.optim.Optimizer]],
    depth: int,
    steps: int = 3,
    warmup: int = 1,
) -> StepOps:
    """``make``'s optimizers on a TinyGPT of ``depth``: ``warmup`` uncounted steps (state
    creation), then ``steps`` counted ones."""
    trainer = Trainer(depth)
    optimizers = make(trainer.model)
    step = _stepper(optimizers)
    for _ in range(warmup):
        trainer.prepare()
        step()
    return count(optimizers, step, trainer.prepare, steps)


def run(
    names: Sequence[str] | None,
    sets: Sequence[str],
    steps: int,
    out: Path,
    command: str = "",
) -> Path:
    """Count every entrant (or those of ``names``, registry names or ``torch:...``) on every
    parameter set of ``sets``; write ``records.jsonl`` and a table (``README.md`` is the
    curator's) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    run_info = {
        "kind": "ops",
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "steps": steps,
    }
    rows = []
    chosen = [
        (n, make)
        for n, make in entrants()
        if names is None or n in names or n.split(":", 1)[1] in names
    ]
    for set_name in sets:
        for entrant, make in chosen:
            ops = measure(entrant, make, SETS[set_name], steps)
            rows.append({"run": run_info, "set": set_name, "entrant": entrant, **asdict(ops)})
            print(
                f"{set_name:7s} {entrant:32s} host reads {ops.host_reads:3d} "
                f"(+{ops.step_reads} step counters)  kernels {ops.kernels:8.1f}",
                flush=True,
            )
    with (out / "records.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (out / "table.md").write_text(table(rows))
    return out


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per parameter set, each entrant's host reads and kernels per step."""
    lines = []
    for set_name in dict.fromkeys(r["set"] for r in rows):
        lines += [
            f"### {set_name}",
            "",
            "| entrant | host reads | step-counter reads | kernels per step |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['entrant']} | {r['host_reads']} | {r['step_reads']} | {r['kernels']:.1f} |"
            for r in rows
            if r["set"] == set_name
        ]
        lines.append("")
    return "\n".join(lines)
