"""What the multi-process trainer tests share: a rank's ``torchrun`` environment and a clean
Accelerate state (the HF Trainer runs on Accelerate too)."""

from __future__ import annotations

import os

from tests.distributed.harness import WORLD


def launched_env(rank: int) -> None:
    """What ``torchrun`` sets for a rank of a one-node job (the ranks' process group, from
    the harness, is already up: the trainer libraries use it as it is)."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD), GROUP_RANK="0", ROLE_RANK=str(rank),
        TORCHELASTIC_RUN_ID="orthoptim-tests", OMP_NUM_THREADS="1",
    )  # fmt: skip


def fresh_state() -> None:
    """Accelerate keeps its state per process; each Accelerator or Trainer after this starts
    from nothing."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
