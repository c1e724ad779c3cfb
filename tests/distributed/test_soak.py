"""The soak test (slow, outside CI): 50 fresh 2-rank FSDP2 runs with save and resume in both
checkpoint forms, zero mismatches and zero crashed ranks with the teardown our harness, example
and README use (tests/distributed/README.md)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from tests.distributed.soak import soak

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable"),
]


def test_fifty_runs_resume_exactly_and_exit_cleanly() -> None:
    assert soak(50, "orthoptim") == {"clean": 50, "mismatch": 0, "crashed_ranks": 0}
