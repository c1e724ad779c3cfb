"""Two gloo ranks kept alive for a whole test module: ``Ranks.run(fn, *args)`` runs the
module-level function ``fn(rank, *args)`` on both and returns their results in rank order."""

from __future__ import annotations

import gc
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(rank: int, port: int, tasks: Any, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    while (task := tasks.get()) is not None:
        fn, args = task
        try:
            results.put((rank, True, fn(rank, *args)))
        except BaseException:  # the traceback goes back to the test
            results.put((rank, False, traceback.format_exc()))
    shutdown()


def shutdown() -> None:
    """Tear down the process group without the exit-time abort of 6 runs in 100 (``terminate
    called without an active exception``, tests/distributed/README.md): first free the objects
    that still hold the group (reference cycles of models, DTensors and optimizers, which the
    interpreter would otherwise collect during finalization, after ``destroy_process_group``),
    then wait for every rank and destroy it."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


class Ranks:
    """The worker processes; ``close()`` stops them."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.tasks = [ctx.Queue() for _ in range(WORLD)]
        self.results = ctx.Queue()
        port = _free_port()
        self.procs = [
            ctx.Process(target=_serve, args=(r, port, self.tasks[r], self.results), daemon=True)
            for r in range(WORLD)
        ]
        for proc in self.procs:
            proc.start()
        self.broken = ""

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        if self.broken:
            raise RuntimeError(f"the ranks were stopped after {self.broken} hung")
        for queue in self.tasks:
            queue.put((fn, args))
        out: dict[int, Any] = {}
        errors = []
        for _ in range(WORLD):
            try:
                rank, ok, value = self.results.get(timeout=TIMEOUT_S)
            except Exception as err:  # queue.Empty: a rank hung in a collective
                self.broken = fn.__name__
                self.close(force=True)
                raise RuntimeError(
                    f"{fn.__name__}: a rank did not answer in {TIMEOUT_S} s"
                ) from err
            if ok:
                out[rank] = value
            else:
                errors.append(f"rank {rank}:\n{value}")
        if errors:
            raise AssertionError(f"{fn.__name__} failed\n" + "\n".join(errors))
        return [out[r] for r in range(WORLD)]

    def close(self, force: bool = False) -> None:
        for proc, queue in zip(self.procs, self.tasks, strict=True):
            if force:
                proc.kill()
            elif proc.is_alive():
                queue.put(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
