"""``orthoptim speed --nproc N``: the per-rank matrix step and the bytes each rank sends.

The same matrices and fixed gradients as ``orthoptim speed`` (the GPT-like default: 24 hidden
matrices, 18.9M parameters), stepped by a registry optimizer (``muon`` by default) in one
process, then on ``N`` gloo ranks started here with ``torch.multiprocessing`` (one thread each),
in two layouts:

* ``replicated`` (DDP): every rank holds every matrix and gradient; each owner steps its share
  (longest-processing-time balance over ``chain.cost``) and the new values are all-gathered.
* ``sharded`` (FSDP2): parameters and gradients are ``Shard(0)`` DTensors; element-wise
  transforms run on the shards, the matrix core on the owner (all-to-all there and back).

Each timed step starts after a barrier; a rank's time is the median over the timed steps of its
``optimizer.step()``, and the step's time is the slowest rank's (the others wait for it at the
next collective). Bytes sent: what ``DistributedStep.sent_bytes`` counts (a ring all-gather sends
``(N-1)`` times the padded buffer; all-to-all sends what goes to other ranks). The loopback
bandwidth seen by gloo is measured with an all-gather of the same size, so the cost model of
docs/distributed.md can be checked against the measurement.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from orthoptim import registry
from orthoptim.distributed.parts import all_gather_single

Shape = tuple[int, int]
LAYOUTS: tuple[str, ...] = ("replicated", "sharded")


@dataclass(frozen=True, slots=True)
class DistConfig:
    """What ``run`` measures: ``spec`` on ``shapes`` x ``layers`` at 1 and ``nproc`` ranks."""

    shapes: tuple[Shape, ...]
    layers: int
    nproc: int
    spec: str = "muon"
    warmup: int = 1
    steps: int = 5
    threads: int = 1


@dataclass(frozen=True, slots=True)
class RankResult:
    """One rank's measurements."""

    rank: int
    step_ms: float
    sent_bytes: int
    owned_flops: float
    gather_ms: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tensors(config: DistConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    shapes = [s for _ in range(config.layers) for s in config.shapes]
    params = [torch.randn(s, generator=g) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=g) for s in shapes]
    return params, grads


def _stepper(layout: str, config: DistConfig, world: int) -> Any:
    """The optimizer of one layout on its own copy of the matrices and gradients."""
    params, grads = _tensors(config)
    group = dist.group.WORLD if layout == "replicated" else None
    if layout == "sharded":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world,))
        params = [distribute_tensor(p, mesh, [Shard(0)]) for p in params]
        grads = [distribute_tensor(g, mesh, [Shard(0)]) for g in grads]
    params = [torch.nn.Parameter(p) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    return registry.build(config.spec, params, process_group=group)


def _worker(rank: int, world: int, port: int, config: DistConfig, out: Any) -> None:
    torch.set_num_threads(config.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    # Rank 0 also steps the single-process optimizer (no process group, no collectives) while
    # the others wait at a barrier; rounds interleave it with the distributed layouts, so load
    # drift on the machine hits every measurement alike.
    single = _stepper("single", config, world) if rank == 0 else None
    steppers = {layout: _stepper(layout, config, world) for layout in LAYOUTS}
    times: dict[str, list[float]] = {name: [] for name in ("single", *LAYOUTS)}
    for i in range(config.warmup + config.steps):
        for name, opt in (("single", single), *steppers.items()):
            dist.barrier()
            if opt is None:
                continue
            start = time.perf_counter()
            opt.step()
            if i >= config.warmup:
                times[name].append(time.perf_counter() - start)
    results = {}
    for name, opt in (("single", single), *steppers.items()):
        if opt is None:
            continue
        step = opt.distributed
        chain = opt.plan.routes[0].chain
        params = opt.param_groups[0]["params"]
        mine = [p for p in params if step is None or step.owns(p)]
        results[name] = RankResult(
            rank,
            statistics.median(times[name]) * 1e3,
            0 if step is None else step.sent_bytes,
            sum(chain.cost(tuple(p.shape)) for p in mine),
            0.0,
        )
    sent = results["replicated"].sent_bytes
    if sent:
        # The all-gather of the replicated step's buffer, alone: the cost model's bandwidth,
        # on the parameters' device, as the step's own all-gather.
        device = steppers["replicated"].param_groups[0]["params"][0].device
        buf = torch.zeros(sent // (world - 1) // 4, device=device)
        full = torch.empty(buf.numel() * world, device=device)
        samples = []
        for _ in range(3):
            dist.barrier()
            start = time.perf_counter()
            all_gather_single(full, buf)
            samples.append(time.perf_counter() - start)
        r = results["replicated"]
        results["replicated"] = RankResult(
            r.rank, r.step_ms, r.sent_bytes, r.owned_flops, statistics.median(samples) * 1e3
        )
    out.put((rank, results))
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


def _launch(config: DistConfig) -> dict[str, list[RankResult]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    world = config.nproc
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, config, queue)) for r in range(world)
    ]
    for proc in procs:
        proc.start()
    answers = sorted((queue.get(timeout=900) for _ in procs), key=lambda a: a[0])
    for proc in procs:
        proc.join(timeout=60)
    return {
        name: [results[name] for _, results in answers if name in results]
        for name in ("single", *LAYOUTS)
    }


def run(config: DistConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the single-process step and ``config.nproc`` ranks in each layout; ``echo`` the
    table; return the measurements."""
    if config.nproc < 2:
        raise ValueError(f"--nproc must be at least 2, got {config.nproc}")
    registry.get(config.spec)
    params = sum(r * c for r, c in config.shapes) * config.layers
    echo(
        f"{config.spec}: {config.layers} x {len(config.shapes)} matrices ({params / 1e6:.3g}M "
        f"params), {config.threads} thread(s) per rank, median of {config.steps} interleaved "
        f"steps after {config.warmup} warm-up"
    )
    measured = _launch(config)
    single = measured["single"][0]
    rows: dict[str, Any] = {"config": asdict(config), "single": asdict(single), "layouts": {}}
    echo(f"1 process: step {single.step_ms:.1f} ms, {single.owned_flops / 1e9:.4g} GFLOP")
    for layout in LAYOUTS:
        ranks = measured[layout]
        slowest = max(r.step_ms for r in ranks)
        ratio = slowest / single.step_ms
        rows["layouts"][layout] = {"ranks": [asdict(r) for r in ranks], "ratio": ratio}
        echo(f"{config.nproc} ranks, {layout}:")
        for r in ranks:
            gather = f", all-gather alone {r.gather_ms:.1f} ms" if r.gather_ms else ""
            echo(
                f"  rank {r.rank}: step {r.step_ms:.1f} ms, owns {r.owned_flops / 1e9:.4g} GFLOP, "
                f"sends {r.sent_bytes / 2**20:.3g} MiB/step{gather}"
            )
        echo(f"  per-rank step / 1-process step: {ratio:.2f}x (target <= 0.6x at 2 ranks)")
    return rows


def write(rows: dict[str, Any], out: Path) -> Path:
    """``rows`` with the environment, as ``out/speed_dist.json``; returns the file."""
    from orthoptim.bench.shared.environment import environment

    out.mkdir(parents=True, exist_ok=True)
    path = out / "speed_dist.json"
    path.write_text(json.dumps({**rows, "env": environment()}, indent=2, default=str) + "\n")
    return path


def shapes_or_default(text: str | None, default: Sequence[Shape]) -> tuple[Shape, ...]:
    from orthoptim.bench.speed.benchmark import parse_shapes

    return parse_shapes(text) if text else tuple(default)
