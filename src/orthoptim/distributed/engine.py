"""The distributed step: one owner rank per matrix step, bucketed collectives, rank-symmetric state.

Two layouts, detected from the parameters (``detect``):

- ``"replicated"`` (DDP, or a process group passed explicitly; ``replicated.py``): every rank
  holds the whole all-reduced gradient. Element-wise chains run on every rank (no
  communication). A matrix chain runs only on its owner, whose state is the only copy (ZeRO-1;
  ``replicate_state`` keeps the element-wise prefix's state everywhere); the owners' new values
  are all-gathered, one padded flat buffer per dtype and round.
- ``"sharded"`` (FSDP2 ``fully_shard``: DTensor parameters, 1-D mesh, ``Shard(0)``;
  ``sharded.py``): the element-wise prefix and tail of every chain run on the local shards, with
  state sharded like the parameter (DTensors); the matrix core's input shards go to the owner
  only (one all-to-all per dtype and round), the owner runs the core on the full matrices (its
  state stays there) and the result rows go back the same way.

Rounds are (param group, shape) buckets of each owner, so same-shape matrices still meet in one
``apply_many``; collectives are asynchronous, so one round travels while the next computes.

State is rank-symmetric where DCP needs it: every rank holds ``step`` for every parameter (so
``get_optimizer_state_dict``'s initialising step never runs on one rank only), sharded buffers
are DTensors, and owner-only buffers are plain tensors under keys written by their owner alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Shard

from orthoptim.distributed.owners import assign_owners, matrix_jobs
from orthoptim.distributed.parts import Layout, UnsupportedLayoutError, local_tensor
from orthoptim.distributed.replicated import ReplicatedSteps
from orthoptim.distributed.sharded import ShardedSteps
from orthoptim.recipes.plan import Plan, group_layout
from orthoptim.transforms.chain import Chain

__all__ = ["DistributedStep", "UnsupportedLayoutError", "detect", "is_distributed", "local_tensor"]

STATE_DICT_TIMEOUT = timedelta(minutes=5)
"""How long ``state_dict()`` waits under gloo for every rank to call it before it raises (a rank
that saves alone, as HF Trainer's DDP save does, would otherwise wait in a collective)."""


def _dparams(groups: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, Tensor]]:
    for group in groups:
        names = group.get("param_names") or [""] * len(group["params"])
        yield from zip(names, group["params"], strict=True)


def detect(
    params: object,
    groups: Sequence[Mapping[str, Any]],
    plan: Plan,
    process_group: Any,
    replicate_state: bool = False,
    positions: Mapping[int, tuple[int, int]] | None = None,
) -> DistributedStep | None:
    """The distributed step for these parameters, or ``None`` for a single-process step.

    FSDP2: detected from DTensor parameters (1-D mesh, ``Shard(0)`` only). Replicated: when
    ``params`` is a ``DistributedDataParallel`` or ``process_group`` is given, with more than one
    rank. Otherwise ``None``: every rank computes everything, as in a single process.
    ``replicate_state``, ``positions``: see ``DistributedStep``.
    """
    if not dist.is_available() or not dist.is_initialized():
        if process_group is not None:
            raise ValueError("process_group was given but torch.distributed is not initialised")
        return None
    named = list(_dparams(groups))
    sharded = [(n, p) for n, p in named if isinstance(p, DTensor)]
    if sharded:
        if len(sharded) != len(named):
            plain = [n or tuple(p.shape) for n, p in named if not isinstance(p, DTensor)]
            raise UnsupportedLayoutError(
                f"some parameters are DTensors and some are not (plain: {plain[:5]}); shard the "
                "whole model with fully_shard or none of it"
            )
        mesh = sharded[0][1].device_mesh
        if mesh.ndim != 1:
            raise UnsupportedLayoutError(
                f"mesh {mesh} has {mesh.ndim} dimensions (HSDP or tensor parallel); only a 1-D "
                "FSDP2 mesh is supported"
            )
        for n, d in sharded:
            if d.device_mesh != mesh:
                raise UnsupportedLayoutError(
                    f"parameter {n} lives on mesh {d.device_mesh}, others on {mesh}: one optimizer "
                    "over several meshes is not supported"
                )
            if d.placements != (Shard(0),):
                raise UnsupportedLayoutError(
                    f"parameter {n} has placements {d.placements}; only FSDP2's (Shard(dim=0),) "
                    "on a 1-D mesh is supported (not tensor-parallel Shard(1) or Replicate)"
                )
        return DistributedStep("sharded", mesh.get_group(), plan, groups, positions=positions)
    from torch.nn.parallel import DistributedDataParallel

    if process_group is None and isinstance(params, DistributedDataParallel):
        process_group = params.process_group
    if process_group is None:
        return None
    if dist.get_world_size(process_group) == 1:
        return None
    return DistributedStep(
        "replicated", process_group, plan, groups, replicate_state, positions=positions
    )


class DistributedStep(ReplicatedSteps, ShardedSteps):
    """Runs ``ChainOptimizer.step``'s updates across the ranks of ``group`` (see module doc).

    ``owners`` maps ``id(p)`` to the rank that computes the matrix step of ``p``; ``sent_bytes``
    is what this rank sent during the last step (ring all-gather: ``(world - 1)`` times its
    padded buffer; all-to-all: what it sent to the other ranks). ``positions``: each
    parameter's ``(Ctx.position, Ctx.route_size)`` by ``id(p)``, the shell's
    (``groups.route_positions``), the same on every rank.
    """

    def __init__(
        self,
        layout: Layout,
        group: Any,
        plan: Plan,
        groups: Sequence[Mapping[str, Any]],
        replicate_state: bool = False,
        *,
        positions: Mapping[int, tuple[int, int]] | None = None,
    ) -> None:
        self.layout = layout
        self.positions: Mapping[int, tuple[int, int]] = {} if positions is None else positions
        self.replicate_state = replicate_state and layout == "replicated"
        self.group = group
        self.plan = plan
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.owners: dict[int, int] = {}
        self.sent_bytes = 0
        self._loads = [0.0] * self.world
        self.assign(groups)

    def assign(self, groups: Sequence[Mapping[str, Any]]) -> None:
        """Give each new matrix-chain parameter of ``groups`` an owner (LPT over chain cost)."""
        jobs = [(c, p) for c, p in matrix_jobs(self.plan, groups) if id(p) not in self.owners]
        shapes = [tuple(p.shape) for _, p in jobs]
        ranks = assign_owners([c for c, _ in jobs], self.world, self._loads, shapes)
        self.owners.update({id(p): r for (_, p), r in zip(jobs, ranks, strict=True)})

    def local_keys(self, chain: Chain, p: Tensor) -> set[str] | None:
        """The state keys (besides ``step``) this rank keeps for ``p``; ``None``: all of the
        chain's, as in a single process."""
        return self._kept_keys(chain, p, self.owns(p))

    def _kept_keys(self, chain: Chain, p: Tensor, owner: bool) -> set[str] | None:
        """The state keys an owner (``owner``) or another rank keeps for ``p``."""
        lo, hi = chain.core
        if lo == hi or (self.layout == "replicated" and owner):
            return None
        meta = torch.empty(p.shape, dtype=p.dtype, device="meta")
        if self.layout == "replicated":
            return set(chain.init_range(0, lo, meta)) if self.replicate_state else set()
        keys = self._elementwise_keys(chain, meta)
        return keys | set(chain.init_range(lo, hi, meta)) if owner else keys

    def shard_keys(self, chain: Chain, p: Tensor) -> set[str]:
        """The state keys of ``p`` kept as FSDP2 DTensor shards: its element-wise buffers."""
        if self.layout != "sharded":
            return set()
        return self._elementwise_keys(chain, torch.empty(p.shape, dtype=p.dtype, device="meta"))

    @staticmethod
    def _elementwise_keys(chain: Chain, meta: Tensor) -> set[str]:
        lo, hi = chain.core
        n = len(chain.transforms)
        return set(chain.init_range(0, lo, meta)) | set(chain.init_range(hi, n, meta))

    def consolidated(
        self, state: Mapping[Tensor, Mapping[str, Tensor]], groups: Sequence[Mapping[str, Any]]
    ) -> dict[int, dict[str, Tensor]]:
        """``{id(p): buffers}``: the buffers this rank does not keep, from their owners, so that
        every rank's state dict holds every buffer of every parameter (a consolidated checkpoint
        loads at any world size).

        Collective: every rank must call it (``state_dict`` does, on every rank), and does the
        same broadcasts in the same order, one per owner-only buffer that is not empty, on the
        parameters' device. Before any is sent, owners check each buffer against the shape and
        dtype a fresh init gives (or its held size, ``TransformBase.held``), and one all-reduce
        makes every rank raise ``ValueError`` if one does not fit (a checkpoint is never
        written incomplete) and tells every rank which buffers are at their held size.
        """
        jobs: list[tuple[Tensor, str, int, Tensor, Tensor, str]] = []
        for name, p, chain, layout in self._matrix_params(groups):
            if "step" not in state.get(p, {}):
                continue  # not stepped yet: no rank holds buffers for it
            owner = self.owners[id(p)]
            meta = torch.empty(p.shape, dtype=p.dtype, device="meta")
            fresh, in_use = chain.init(meta, layout), chain.held(meta, layout)
            kept = self._kept_keys(chain, p, owner=False)
            for key in sorted(k for k in fresh if kept is not None and k not in kept):
                jobs.append((p, key, owner, fresh[key], in_use[key], name))
        if not jobs:  # the same on every rank: nothing to gather, no collective
            return {}
        device = local_tensor(jobs[0][0]).device
        self._rendezvous(device)
        misfits = []
        # flags[0]: misfits; flags[1 + i]: job i's buffer is at its held size (a buffer its
        # transform releases, TransformBase.held, has either shape), set by its owner only
        flags = torch.zeros(1 + len(jobs), device=device)
        for i, (p, key, owner, like, held, name) in enumerate(jobs):
            if owner == self.rank:
                mine = state[p].get(key)
                if mine is None or mine.shape not in (like.shape, held.shape):
                    mine_fits = False
                else:
                    mine_fits = mine.dtype == like.dtype
                    flags[1 + i] = float(mine.shape == held.shape)
                if not mine_fits:
                    found = "none" if mine is None else f"{tuple(mine.shape)} {mine.dtype}"
                    misfits.append(f"{name or tuple(p.shape)} {key}: {found}")
        flags[0] = float(len(misfits))
        dist.all_reduce(flags, group=self.group)
        shown = flags.tolist()
        if shown[0]:
            where = "; ".join(misfits) or "on another rank"
            raise ValueError(
                "state_dict() cannot gather every buffer of every parameter (a buffer does not "
                f"have the shape and dtype its transform's init gives: {where}), so it would "
                "write an incomplete checkpoint; nothing was saved"
            )
        out: dict[int, dict[str, Tensor]] = {}
        for (p, key, owner, like, held, _), at_held in zip(jobs, shown[1:], strict=True):
            shape = held.shape if at_held else like.shape
            if owner == self.rank:
                tensor = state[p][key]
            else:
                tensor = torch.empty(shape, dtype=like.dtype, device=local_tensor(p).device)
                out.setdefault(id(p), {})[key] = tensor
            if tensor.numel():  # every rank knows the shape: an empty buffer needs no transfer
                src = dist.get_global_rank(self.group, owner)
                dist.broadcast(tensor, src=src, group=self.group)
        return out

    def _rendezvous(self, device: torch.device) -> None:
        """Wait for every rank to gather. Under gloo with the parameters on the CPU: a
        monitored barrier, ``RuntimeError`` after ``STATE_DICT_TIMEOUT`` naming the ranks that
        did not come. Otherwise no barrier: the flag's all-reduce that follows, on the
        parameters' device, is the rendezvous (with the backend's own timeout), while
        ``barrier()`` picks its own device: the CPU under ``cpu:gloo,cuda:nccl`` (a host round
        trip), under NCCL the current CUDA device (device 0 where a script never set one)."""
        if device.type != "cpu" or dist.get_backend(self.group) != "gloo":
            return
        try:
            dist.monitored_barrier(self.group, timeout=STATE_DICT_TIMEOUT, wait_all_ranks=True)
        except RuntimeError as err:
            raise RuntimeError(
                "state_dict() gathers the buffers other ranks own, so every rank must call it "
                "(or call opt.consolidate_state_dict() on every rank first; then state_dict() "
                f"on one rank, such as HF Trainer's DDP save, is complete): {err}"
            ) from None

    def _matrix_params(
        self, groups: Sequence[Mapping[str, Any]]
    ) -> Iterator[tuple[str, Tensor, Chain, str]]:
        """``(name, p, chain, layout)`` of every parameter with an owner, in group order."""
        for group in groups:
            chain, lo, hi = self.split(group["route"])
            if lo < hi:
                for name, p in _dparams([group]):
                    yield name, p, chain, group_layout(group)

    def agree(self, flag: Tensor | None, like: Tensor) -> Tensor:
        """``flag`` (a boolean scalar, ``None`` for false) raised on any rank: one all-reduce,
        so that all ranks raise or skip together (shards differ between ranks, and a replicated
        gradient may have been changed on one rank only). It runs on ``like``'s device (a
        gradient's): an NCCL group has no CPU backend, and reading the result is then the
        step's one host read."""
        device = local_tensor(like).device
        value = (
            torch.zeros((), dtype=torch.float32, device=device)
            if flag is None
            else flag.to(device=device, dtype=torch.float32)
        )
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return value.gt(0)

    # -- the step -----------------------------------------------------------------------------

    def step(
        self,
        state: MutableMapping[Tensor, Any],
        work: Sequence[tuple[Mapping[str, Any], Sequence[tuple[str, Tensor]]]],
        at_previous: Mapping[Tensor, Tensor] | None,
        step_group: Callable[..., None],
    ) -> None:
        """Update every parameter of ``work`` (``(group, [(name, p)])`` with gradients).

        ``at_previous``: ``Ctx.grad_at_previous`` per parameter (exact MARS). ``step_group`` is
        the shell's single-process group step (``ChainOptimizer._step_group``, fast paths
        included): replicated parameters are stepped by it, on every rank for element-wise
        chains and on the owner for matrix chains, so they compute exactly what one process does.
        """
        at_previous = at_previous or {}
        self.sent_bytes = 0
        if self.layout == "replicated":
            self._replicated(state, work, at_previous, step_group)
            return
        self._sharded_step(state, work, at_previous)


def is_distributed(params: object, process_group: Any) -> bool:
    """Whether ``ChainOptimizer`` would share out the steps of ``params``: a process group of
    more than one rank, a ``DistributedDataParallel`` model, or a model with DTensor parameters."""
    if not dist.is_available() or not dist.is_initialized():
        return False
    if process_group is not None:
        return dist.get_world_size(process_group) > 1
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(params, DistributedDataParallel):
        return dist.get_world_size(params.process_group) > 1
    if isinstance(params, torch.nn.Module):
        return any(isinstance(p, DTensor) for p in params.parameters())
    return False
