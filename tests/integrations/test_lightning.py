"""A ``LightningModule`` whose ``configure_optimizers`` returns ``orthoptim.build(name, self)``
with a per-step lr scheduler dict (the pattern of ``docs/integrations.md``), fitted by a real
``lightning.Trainer`` on the CPU.

- Resume: ``MAX_STEPS`` steps straight, against a second Trainer given the checkpoint written
  after step ``SAVE_AT``, the last batch of the first epoch (``ckpt_path=``): bit-identical
  parameters, optimizer state and lr. The data order is Lightning's matter, not the optimizer's,
  and it resumes exactly only from such checkpoints here: a plain ``DataLoader`` restarts at its
  first batch after a mid-epoch checkpoint, and from an ``every_n_epochs`` checkpoint (written by
  the epoch-end hook) Lightning 2.6 runs the next epoch's first batch twice (measured).
- ``strategy="ddp"`` on 2 CPU processes (gloo) launched as ``torchrun`` launches them (its
  environment variables; Lightning then uses its ``TorchElasticEnvironment`` and launches
  nothing itself, where from a bare ``pytest`` it would re-run the command line in a child):
  both ranks end with identical parameters, equal to one process stepping on the ranks'
  batches together to round-off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

pytest.importorskip("lightning")

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

import orthoptim
from tests.distributed.harness import WORLD, Ranks
from tests.integrations.common import (
    VOCAB,
    TinyLM,
    assert_same_end,
    end_state,
    launched_env,
    next_token_loss,
)

BATCH, SEQ, N_SAMPLES = 4, 8, 8  # 2 steps per epoch in one process
MAX_STEPS, SAVE_AT = 4, 2

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # few dataloader workers, CPU only
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),  # Lightning's own
]


class LitLM(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyLM()

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        (ids,) = batch
        return next_token_loss(self.net, ids)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = orthoptim.build("muon", self, lr=0.02, adamw_lr=3e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader(batch: int = BATCH) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (N_SAMPLES, SEQ), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=batch)


def trainer(root: Path, checkpoint: ModelCheckpoint | None = None, **options: Any) -> L.Trainer:
    """A CPU trainer writing only under ``root``, checkpointing only through ``checkpoint``."""
    return L.Trainer(
        accelerator="cpu",
        default_root_dir=root,
        enable_checkpointing=checkpoint is not None,
        callbacks=[] if checkpoint is None else [checkpoint],
        max_steps=MAX_STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def final_state(t: L.Trainer, module: LitLM) -> dict[str, Any]:
    (opt,) = t.optimizers
    return end_state(
        module.named_parameters(), opt.state_dict(), [g["lr"] for g in opt.param_groups]
    )


def test_fit_checkpoint_and_resume_bit_exactly(tmp_path: Path) -> None:
    every = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_train_steps=SAVE_AT)
    module = LitLM()
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    straight = trainer(tmp_path, every)
    straight.fit(module, loader())
    want = final_state(straight, module)
    assert isinstance(straight.optimizers[0], orthoptim.ChainOptimizer)
    assert all(not torch.equal(p, start[n]) for n, p in want["params"].items())
    assert max(want["lr"]) < 0.02  # the scheduler stepped

    (checkpoint,) = tmp_path.glob(f"epoch=0-step={SAVE_AT}.ckpt")
    resumed_module = LitLM()
    resumed = trainer(tmp_path)
    resumed.fit(resumed_module, loader(), ckpt_path=str(checkpoint))
    assert_same_end(final_state(resumed, resumed_module), want)


def ddp_on_rank(rank: int, root: str) -> dict[str, Any]:
    launched_env(rank)
    module = LitLM()
    t = trainer(Path(root), strategy="ddp", devices=WORLD)
    t.fit(module, loader())
    assert type(t.strategy.cluster_environment).__name__ == "TorchElasticEnvironment"
    assert t.world_size == WORLD and t.global_rank == rank and t.global_step == MAX_STEPS
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_ddp_two_processes_agree_and_match_one(ranks: Ranks, tmp_path: Path) -> None:
    rank0, rank1 = ranks.run(ddp_on_rank, str(tmp_path))
    # Each rank's DistributedSampler takes every other sample: per step the two ranks see
    # what one process sees with twice the batch, and DDP averages their gradients.
    single = LitLM()
    trainer(tmp_path).fit(single, loader(batch=WORLD * BATCH))
    for n, p in single.named_parameters():
        assert torch.equal(rank0[n], rank1[n]), f"{n}: the ranks disagree"
        torch.testing.assert_close(rank0[n], p.detach(), rtol=1e-5, atol=1e-6, msg=n)
