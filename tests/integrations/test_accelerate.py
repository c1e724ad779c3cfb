"""``accelerator.prepare(model, orthoptim.build(...))`` trains, saves and resumes exactly, in one
process and in two gloo CPU processes (DDP).

- One process: ``STEPS`` steps straight, against ``SAVE_AT`` steps, ``save_state``, fresh
  objects, ``load_state`` and the rest: bit-identical parameters, optimizer state and lr.
- Two processes (``tests/distributed/harness.Ranks``; ``Accelerator(cpu=True)`` sees
  ``RANK``/``WORLD_SIZE`` and the process group the harness opened): the same resume check on
  each rank, both ranks end bit-identical, and they match one process stepping on the whole
  batch (the ranks' halves averaged by DDP) to round-off. Two ways to build: from the bare model
  before ``prepare`` (each rank computes every matrix step), and from the DDP model ``prepare``
  returned (``build`` detects DDP and shares the matrix steps among the ranks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

pytest.importorskip("accelerate")

from accelerate import Accelerator

import orthoptim
from tests.distributed.harness import WORLD, Ranks
from tests.integrations.common import (
    VOCAB,
    TinyLM,
    assert_same_end,
    end_state,
    fresh_state,
    launched_env,
    next_token_loss,
)

STEPS, SAVE_AT, BATCH, SEQ = 4, 2, 4, 8
BUILD_AT = ("before_prepare", "after_prepare")


def global_batch(step: int) -> Tensor:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, VOCAB, (WORLD * BATCH, SEQ), generator=g)


def prepared(build_at: str) -> tuple[Accelerator, nn.Module, Any, Any]:
    fresh_state()
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model: nn.Module = TinyLM()
    if build_at == "before_prepare":
        opt = orthoptim.build("muon", model, lr=0.02, adamw_lr=3e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        model, opt, sched = accelerator.prepare(model, opt, sched)
    else:
        model = accelerator.prepare(model)
        opt = orthoptim.build("muon", model, lr=0.02, adamw_lr=3e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        opt, sched = accelerator.prepare(opt, sched)
    return accelerator, model, opt, sched


def train(accelerator: Accelerator, model: nn.Module, opt: Any, sched: Any, steps: range) -> None:
    rank, world = accelerator.process_index, accelerator.num_processes
    for step in steps:
        ids = global_batch(step).chunk(world)[rank]
        opt.zero_grad(set_to_none=True)
        accelerator.backward(next_token_loss(model, ids))
        opt.step()
        sched.step()


def snapshot(accelerator: Accelerator, model: nn.Module, opt: Any, sched: Any) -> dict[str, Any]:
    bare = accelerator.unwrap_model(model)
    return end_state(bare.named_parameters(), opt.optimizer.state_dict(), sched.get_last_lr())


def straight_and_resumed(build_at: str, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state after STEPS steps straight, and after SAVE_AT steps, save, fresh objects,
    load and the rest (the checkpoint is written by the straight run)."""
    accelerator, model, opt, sched = prepared(build_at)
    train(accelerator, model, opt, sched, range(SAVE_AT))
    accelerator.save_state(path)
    train(accelerator, model, opt, sched, range(SAVE_AT, STEPS))
    straight = snapshot(accelerator, model, opt, sched)

    accelerator, model, opt, sched = prepared(build_at)
    accelerator.load_state(path)
    train(accelerator, model, opt, sched, range(SAVE_AT, STEPS))
    return straight, snapshot(accelerator, model, opt, sched)


def single_on_whole_batch(world: int) -> dict[str, Tensor]:
    """One process, no Accelerate: the whole global batch each step (what DDP averages of
    ``world`` ranks). Accelerate's prepared scheduler steps ``world`` times per optimizer step
    (its ``step_scheduler_with_optimizer`` convention: each rank's loader is ``world`` times
    shorter), so this one does too."""
    torch.manual_seed(0)
    model = TinyLM()
    opt = orthoptim.build("muon", model, lr=0.02, adamw_lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        next_token_loss(model, global_batch(step)).backward()
        opt.step()
        for _ in range(world):
            sched.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def on_rank(rank: int, build_at: str, path: str) -> dict[str, Any]:
    launched_env(rank)
    try:
        straight, resumed = straight_and_resumed(build_at, path)
        accelerator = Accelerator(cpu=True)
        assert accelerator.num_processes == WORLD and accelerator.process_index == rank
        assert dist.is_initialized()
        _, _, opt, _ = prepared(build_at)
        # built from the DDP model, the matrix steps are shared; from the bare one, not
        assert (opt.optimizer.distributed is not None) == (build_at == "after_prepare")
        assert_same_end(resumed, straight)
        return straight["params"]
    finally:
        fresh_state()


@pytest.fixture
def clean_accelerate() -> Any:
    fresh_state()
    yield
    fresh_state()


@pytest.mark.parametrize("build_at", BUILD_AT)
def test_one_process_resumes_bit_exactly(
    build_at: str, tmp_path: Path, clean_accelerate: Any
) -> None:
    straight, resumed = straight_and_resumed(build_at, str(tmp_path / "state"))
    assert_same_end(resumed, straight)
    want = single_on_whole_batch(1)
    for n, p in straight["params"].items():
        torch.testing.assert_close(p, want[n], rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("build_at", BUILD_AT)
def test_two_processes_resume_agree_and_match_one(
    build_at: str, ranks: Ranks, tmp_path: Path
) -> None:
    rank0, rank1 = ranks.run(on_rank, build_at, str(tmp_path / "state"))
    want = single_on_whole_batch(WORLD)
    for n, p in rank0.items():
        assert torch.equal(p, rank1[n]), f"{n}: the ranks disagree"
        torch.testing.assert_close(p, want[n], rtol=1e-5, atol=1e-6, msg=n)
