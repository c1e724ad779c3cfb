"""Train the arena's language model with FSDP2 and ``muon`` (AdamW for the rest), checkpoint in
both forms (sharded DCP and one consolidated file), resume from each.

    torchrun --nproc-per-node 2 examples/train_fsdp.py

Runs on CPU with gloo (on GPUs: the nccl backend, a "cuda" mesh, the model and batches on each
rank's device; nothing else changes). Each rank reads its own batches of the
``lm`` task (TinyGPT on CPython's pydoc topics); ``fully_shard`` shards every block and the
root, so the parameters are DTensors and ``orthoptim.build`` shares the matrix steps out: each
hidden matrix is orthogonalised by one owner rank (``opt.describe()`` shows which). After
``--steps`` steps the run saves a sharded DCP checkpoint (each rank writes its shards: large
models, same-size resumes) and a consolidated one (``full_state_dict``: one file on rank 0 that
loads in one process or at another world size), then for each a fresh model and optimizer load
it and train ``--resume-steps`` more; each resumed run must match the uninterrupted one bit for
bit.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
from collections.abc import Iterator
from itertools import islice

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

import orthoptim
from orthoptim.bench.arena.tasks.lm import LanguageModel


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


def save(model: torch.nn.Module, opt: torch.optim.Optimizer, path: str, form: str) -> None:
    """A checkpoint in ``form``: "sharded" (DCP directory) or "consolidated" (one file). Every
    rank calls it: gathering the owner-only optimizer buffers is a collective."""
    if form == "sharded":
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
        return
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 holds it
    msd, osd = get_state_dict(model, opt, options=full)
    if dist.get_rank() == 0:
        torch.save({"model": msd, "optim": osd}, path)
    dist.barrier()


def restore(model: torch.nn.Module, opt: torch.optim.Optimizer, path: str, form: str) -> None:
    if form == "sharded":
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return
    state = torch.load(path, weights_only=False)  # every rank reads the one file
    set_state_dict(
        model,
        opt,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=StateDictOptions(full_state_dict=True),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resume-steps", type=int, default=20)
    parser.add_argument(
        "--checkpoint", default=None, help="checkpoint path prefix (default: in a temp dir)"
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    task = LanguageModel()
    prefix = args.checkpoint or os.path.join(tempfile.gettempdir(), "orthoptim-train-fsdp")
    paths = {"sharded": prefix + "-dcp", "consolidated": prefix + "-full.pt"}

    model = sharded_model(task, mesh)
    opt = orthoptim.build("muon", model)
    if rank == 0:
        print(opt.describe())
    batches = task.batches(seed=1 + rank)  # each rank its own data
    start = task.evaluate(model)["val_loss"]  # every rank: an FSDP2 forward is collective
    if rank == 0:
        print(f"step 0: held-out loss {start:.4f} nats/byte")
    loss = train(model, opt, task, batches, args.steps)
    for form, path in paths.items():
        save(model, opt, path, form)
        if rank == 0:
            print(f"step {args.steps}: train loss {loss:.4f}; saved a {form} checkpoint to {path}")
    # The batches after the checkpoint, replayed for the resumed runs.
    after = list(islice(batches, args.resume_steps))
    loss = train(model, opt, task, iter(after), args.resume_steps)
    uninterrupted = full_params(model)

    total = args.steps + args.resume_steps
    all_same = True
    for form, path in paths.items():
        model = sharded_model(task, mesh)
        opt = orthoptim.build("muon", model)
        restore(model, opt, path, form)
        resumed_loss = train(model, opt, task, iter(after), args.resume_steps)
        same = all(torch.equal(t, uninterrupted[n]) for n, t in full_params(model).items())
        all_same &= same
        if rank == 0:
            print(
                f"step {total}, resumed from the {form} checkpoint: train loss {resumed_loss:.4f} "
                f"(uninterrupted {loss:.4f}); parameters equal bit for bit: {same}"
            )
    val = task.evaluate(model)["val_loss"]  # every rank runs it: FSDP2 forward is collective
    if rank == 0:
        print(f"held-out loss after {total} steps: {val:.4f} nats/byte")
    # Free what still holds the process group (reference cycles of the models and optimizers)
    # before destroying it: collected only at interpreter exit, they aborted 6 two-rank runs in
    # 100 with "terminate called without an active exception" (tests/distributed/README.md).
    del model, opt
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    if not all_same:
        raise SystemExit("resume mismatch")


if __name__ == "__main__":
    main()
