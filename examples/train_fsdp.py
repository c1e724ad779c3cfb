"""Train the arena's language model with FSDP2 and ``muon`` (AdamW for the rest), checkpoint
with DCP, resume.

    torchrun --nproc-per-node 2 examples/train_fsdp.py

Runs on CPU with gloo (on GPUs: the nccl backend, a "cuda" mesh, the model and batches on each
rank's device; nothing else changes). Each rank reads its own batches of the
``lm`` task (TinyGPT on CPython's pydoc topics); ``fully_shard`` shards every block and the
root, so the parameters are DTensors and ``orthoptim.build`` shares the matrix steps out: each
hidden matrix is orthogonalised by one owner rank (``opt.describe()`` shows which). After
``--steps`` steps the run saves a DCP checkpoint, then a fresh model and optimizer load it and
train ``--resume-steps`` more; the resumed run must match the uninterrupted one bit for bit.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from itertools import islice

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

import orthoptim
from orthoptim.bench.tasks.lm import LanguageModel


def sharded_model(task: LanguageModel, mesh: DeviceMesh) -> torch.nn.Module:
    model = task.model(seed=0)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    task: LanguageModel,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
) -> float:
    """``steps`` steps; the last step's training loss averaged over the ranks."""
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = task.loss(model, next(batches))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    return mean.item() / dist.get_world_size()


def full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.full_tensor().clone() for n, p in model.named_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resume-steps", type=int, default=20)
    parser.add_argument("--checkpoint", default=None, help="DCP directory (default: a temp dir)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    task = LanguageModel()
    path = args.checkpoint or os.path.join(tempfile.gettempdir(), "orthoptim-train-fsdp")

    model = sharded_model(task, mesh)
    opt = orthoptim.build("muon", model)
    if rank == 0:
        print(opt.describe())
    batches = task.batches(seed=1 + rank)  # each rank its own data
    start = task.evaluate(model)["val_loss"]  # every rank: an FSDP2 forward is collective
    if rank == 0:
        print(f"step 0: held-out loss {start:.4f} nats/byte")
    loss = train(model, opt, task, batches, args.steps)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    if rank == 0:
        print(f"step {args.steps}: train loss {loss:.4f}; saved DCP checkpoint to {path}")
    # The batches after the checkpoint, replayed for the resumed run.
    after = list(islice(batches, args.resume_steps))
    loss = train(model, opt, task, iter(after), args.resume_steps)
    uninterrupted = full_params(model)

    model = sharded_model(task, mesh)
    opt = orthoptim.build("muon", model)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed_loss = train(model, opt, task, iter(after), args.resume_steps)
    same = all(torch.equal(t, uninterrupted[n]) for n, t in full_params(model).items())
    val = task.evaluate(model)["val_loss"]  # every rank runs it: FSDP2 forward is collective
    if rank == 0:
        total = args.steps + args.resume_steps
        print(f"step {total}: uninterrupted train loss {loss:.4f}, resumed {resumed_loss:.4f}")
        print(f"resumed parameters equal the uninterrupted run bit for bit: {same}")
        print(f"held-out loss after {total} steps: {val:.4f} nats/byte")
    dist.destroy_process_group()
    if not same:
        raise SystemExit("resume mismatch")


if __name__ == "__main__":
    main()
