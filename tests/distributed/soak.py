"""Soak test: repeated fresh 2-rank FSDP2 runs with a sharded (DCP) and a consolidated save and a
resume from each, counting mismatches and crashed ranks.

    python -m tests.distributed.soak --runs 50 [--teardown plain|barrier|gc|orthoptim]

Each run starts two new processes (``torch.multiprocessing`` spawn), which initialise gloo,
train ``muon``, ``soap`` and ``normuon`` 3 steps on the tiny model, save both forms, train one
more step, resume a fresh model and optimizer from each form, take the same step and compare
(bit-exact), then tear down the process group with ``--teardown``. A rank that dies (a signal,
``terminate called without an active exception``) or exits non-zero counts as a crash.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.distributed import workers as W
from tests.distributed.harness import shutdown

NAMES = ("muon", "soap", "normuon")
TEARDOWNS = ("plain", "barrier", "gc", "orthoptim")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, port: int, folder: str, teardown: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=W.WORLD)
    mismatches = 0
    for name in NAMES:
        dcp_path = os.path.join(folder, f"{name}-dcp")
        full_path = os.path.join(folder, f"{name}.pt")
        m, opt = W._dcp_objects("fsdp", name)
        W._train(m, opt, rank, range(3), 1, "fsdp")
        W._save(m, opt, dcp_path)
        checkpoint = W._full_checkpoint(m, opt, "set")
        if rank == 0:
            torch.save(checkpoint, full_path)
        dist.barrier()
        W._train(m, opt, rank, range(3, 4), 1, "fsdp")
        want = W._full(m)
        got = W.dcp_resume(rank, "fsdp", name, dcp_path, 3)
        mismatches += any(not torch.equal(got[n], t) for n, t in want.items())
        got = W.full_resume(rank, "fsdp", name, full_path, 3, "set")
        mismatches += any(not torch.equal(got[n], t) for n, t in want.items())
    if teardown == "orthoptim":
        shutdown()
    else:  # the variants that isolate the cause
        if teardown == "gc":
            gc.collect()
        if teardown == "barrier":
            dist.barrier()
        dist.destroy_process_group()
    print(f"rank {rank}: process group destroyed", file=sys.stderr, flush=True)
    if mismatches:
        sys.exit(3)


def soak(runs: int, teardown: str) -> dict[str, int]:
    """``runs`` fresh 2-rank runs; counts of clean runs, mismatching runs and crashed ranks."""
    ctx = mp.get_context("spawn")
    counts = {"clean": 0, "mismatch": 0, "crashed_ranks": 0}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            port = _free_port()
            procs = [
                ctx.Process(target=_rank, args=(r, port, folder, teardown)) for r in range(W.WORLD)
            ]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join(timeout=300)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            codes = [proc.exitcode for proc in procs]
        crashed = sum(code not in (0, 3) for code in codes)
        counts["crashed_ranks"] += crashed
        counts["mismatch"] += any(code == 3 for code in codes)
        counts["clean"] += all(code == 0 for code in codes)
        print(f"exit codes {codes}", flush=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--teardown", choices=TEARDOWNS, default="orthoptim")
    args = parser.parse_args()
    print(soak(args.runs, args.teardown))


if __name__ == "__main__":
    main()
