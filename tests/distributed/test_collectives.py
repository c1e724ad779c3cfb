"""Every tensor the distributed step and its state-dict path hand to a collective comes from the
parameters' device, on a group whose backend serves it (issue 17: an NCCL group has no CPU
backend, and under ``cpu:gloo,cuda:nccl`` a CPU tensor is a blocking host round trip).

On this CPU-only machine the devices agree by construction, so the spy (``collectives.py``)
follows where each tensor came from: one made by a factory without ``device=`` would be on the
CPU on a GPU run. ``test_the_spy_sees_what_it_should`` shows it can fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch.distributed as dist

from tests.distributed import collectives as C
from tests.distributed.harness import Ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

# muon: a matrix route plus its AdamW route (embedding, head, vectors); adamw: element-wise
# only; soap: Kronecker factors owned by one rank, consolidated through broadcasts.
NAMES = ("muon", "adamw", "soap")
MODES = ("ddp", "group", "replicate", "fsdp")


@pytest.fixture(scope="module")
def ranks() -> Iterator[Ranks]:
    pair = Ranks()
    yield pair
    pair.close()


def test_served_devices_of_backend_strings() -> None:
    assert C.served("gloo") == {"cpu"}
    assert C.served("nccl") == {"cuda"}
    assert C.served("cpu:gloo,cuda:nccl") == {"cpu", "cuda"}
    assert C.served("cuda:nccl") == {"cuda"}
    assert C.served("unknown") == set()


def test_the_spy_sees_what_it_should(ranks: Ranks) -> None:
    for report in ranks.run(C.self_check):
        flagged = {label for label, found in report.items() if found}
        assert flagged == {
            "flag without device",
            "literal cpu device",
            "derived from a device-less tensor",
            "a view of a device-less buffer",
            "object collective",
        }, report


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_every_collective_is_on_the_parameters_device(ranks: Ranks, mode: str, name: str) -> None:
    for rank, (found, ops) in enumerate(ranks.run(C.audit, mode, name)):
        assert found == [], f"rank {rank}: {found}"
        # The spy saw the collectives it is meant to check: the agreed non-finite flag each
        # step, and the layout's exchanges where a rank owns a matrix step.
        assert ops.get("c10d.allreduce_.default", 0) >= 3, ops
        if name != "adamw":
            exchange = (
                "c10d.alltoall_base_.default" if mode == "fsdp" else "c10d._allgather_base_.default"
            )
            assert ops.get(exchange, 0) >= 3, ops
        if name == "soap" or (name == "muon" and mode in ("ddp", "group")):
            # owner-only buffers to consolidate: soap's factors; muon's momentum only where
            # its owner alone keeps it (replicate_state keeps it everywhere, FSDP2 sharded)
            assert ops.get("c10d.broadcast_.default", 0) >= 1, ops


@pytest.mark.parametrize("backend", ["gloo", "nccl", "cpu:gloo,cuda:nccl"])
def test_consolidating_meets_at_a_barrier_only_under_gloo(ranks: Ranks, backend: str) -> None:
    """A monitored barrier (naming missing ranks) only where gloo serves CPU parameters; else
    the flag's all-reduce is the rendezvous: ``barrier()`` would pick its own device (the CPU
    under ``cpu:gloo,cuda:nccl``, NCCL's current device)."""
    for found, ops in ranks.run(C.rendezvous, backend):
        assert found == []
        barriers = {op for op in ops if "barrier" in op}
        assert barriers == ({"c10d.monitored_barrier_.default"} if backend == "gloo" else set())
        assert ops["c10d.allreduce_.default"] == 1 and ops["c10d.broadcast_.default"] >= 1
