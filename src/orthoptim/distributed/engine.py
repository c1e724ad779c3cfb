"""The distributed step: one owner rank per matrix step, bucketed collectives, rank-symmetric state.

Two layouts, detected from the parameters:

- ``"replicated"`` (DDP, or a process group passed explicitly): every rank holds the whole
  all-reduced gradient. Element-wise chains run on every rank (no communication: an exchange
  would move 4 bytes per element to save ~10 FLOPs). A matrix chain runs only on its owner,
  whose state is the only copy (ZeRO-1); the owners' new parameter values are then exchanged
  with one all-gather of a padded flat buffer per dtype.
- ``"sharded"`` (FSDP2 ``fully_shard``: DTensor parameters, 1-D mesh, ``Shard(0)``): the
  element-wise prefix and tail of every chain run on the local shards, their state is sharded
  like the parameter (DTensors); the matrix core's input shards go to the owner only (one
  all-to-all per dtype), the owner runs the core on the full matrices (its state stays on the
  owner) and the result shards go back (one all-to-all per dtype).

State is rank-symmetric where DCP needs it: every rank holds ``step`` for every parameter (so
``get_optimizer_state_dict``'s initialising step never runs on one rank only), sharded buffers
are DTensors, and owner-only buffers are plain tensors under keys written by their owner alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Shard

from orthoptim.distributed.owners import assign_owners, core_reads, split_chain
from orthoptim.recipes.plan import Plan
from orthoptim.transforms.base import Chain, Ctx, _Namespaced

Layout = Literal["replicated", "sharded"]


class UnsupportedLayoutError(ValueError):
    """The parameters' mesh or placement is one the distributed step does not support."""


@dataclass(eq=False)
class _Item:
    """One parameter's share of a step."""

    name: str
    p: Tensor
    state: MutableMapping[str, Tensor]
    ctx: Ctx
    u: Tensor
    owner: int


@dataclass
class _Job:
    """One param group's parameters with a gradient, and its chain split."""

    chain: Chain
    lr: float
    lo: int
    hi: int
    items: list[_Item] = field(default_factory=list)


class _ByParam:
    """A job whose items are looked up by ``id(p)``."""

    def __init__(self, job: _Job) -> None:
        self.chain, self.lo, self.lr = job.chain, job.lo, job.lr
        self.items = {id(it.p): it for it in job.items}


class _LocalState(MutableMapping[str, Tensor]):
    """A parameter's state seen through its local shards: DTensor buffers read as their local
    tensor (same storage, so in-place updates land in the DTensor), plain tensors written over a
    DTensor buffer are wrapped back into one."""

    __slots__ = ("_state",)

    def __init__(self, state: MutableMapping[str, Tensor]) -> None:
        self._state = state

    def __getitem__(self, key: str) -> Tensor:
        value = self._state[key]
        return value.to_local() if isinstance(value, DTensor) else value

    def __setitem__(self, key: str, value: Tensor) -> None:
        old = self._state.get(key)
        if isinstance(old, DTensor) and not isinstance(value, DTensor):
            value = DTensor.from_local(
                value,
                old.device_mesh,
                old.placements,
                run_check=False,
                shape=old.shape,
                stride=old.stride(),
            )
        self._state[key] = value

    def __delitem__(self, key: str) -> None:
        del self._state[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def _run(chain: Chain, lo: int, hi: int, items: Sequence[_Item], local: bool) -> None:
    """Transforms ``[lo, hi)`` of ``chain`` over ``items``, transform-major, updating ``u``."""
    if lo == hi or not items:
        return
    us = [it.u for it in items]
    states = [_LocalState(it.state) if local else it.state for it in items]
    ctxs = [it.ctx for it in items]
    for prefix, t in zip(chain.prefixes[lo:hi], chain.transforms[lo:hi], strict=True):
        us = t.apply_many(us, [_Namespaced(s, prefix) for s in states], ctxs)
    for it, u in zip(items, us, strict=True):
        it.u = u


def _init_range(chain: Chain, lo: int, hi: int, p: Tensor) -> dict[str, Tensor]:
    out = {}
    for prefix, t in zip(chain.prefixes[lo:hi], chain.transforms[lo:hi], strict=True):
        out.update({f"{prefix}.{k}": v for k, v in t.init(p).items()})
    return out


def local_tensor(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor; any other tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def _rows(n: int, world: int) -> list[int]:
    """Rows of each rank's ``Shard(0)`` piece of ``n`` rows (``torch.chunk``, as FSDP2)."""
    size = -(-n // world) if n else 0
    return [max(0, min(n, (r + 1) * size) - r * size) for r in range(world)]


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
) -> DistributedStep | None:
    """The distributed step for these parameters, or ``None`` for a single-process step.

    FSDP2: detected from DTensor parameters (1-D mesh, ``Shard(0)`` only). Replicated: when
    ``params`` is a ``DistributedDataParallel`` or ``process_group`` is given, with more than one
    rank. Otherwise ``None``: every rank computes everything, as in a single process.
    ``replicate_state``: see ``DistributedStep``.
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
        mesh = cast(DTensor, sharded[0][1]).device_mesh
        if mesh.ndim != 1:
            raise UnsupportedLayoutError(
                f"mesh {mesh} has {mesh.ndim} dimensions (HSDP or tensor parallel); only a 1-D "
                "FSDP2 mesh is supported"
            )
        for n, p in sharded:
            d = cast(DTensor, p)
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
        return DistributedStep("sharded", mesh.get_group(), plan, groups)
    from torch.nn.parallel import DistributedDataParallel

    if process_group is None and isinstance(params, DistributedDataParallel):
        process_group = params.process_group
    if process_group is None:
        return None
    if dist.get_world_size(process_group) == 1:
        return None
    return DistributedStep("replicated", process_group, plan, groups, replicate_state)


class DistributedStep:
    """Runs ``ChainOptimizer.step``'s updates across the ranks of ``group`` (see module doc).

    ``owners`` maps ``id(p)`` to the rank that computes the matrix step of ``p``; ``sent_bytes``
    is what this rank sent during the last step (ring all-gather: ``(world - 1)`` times its
    padded buffer; all-to-all: what it sent to the other ranks).
    """

    def __init__(
        self,
        layout: Layout,
        group: Any,
        plan: Plan,
        groups: Sequence[Mapping[str, Any]],
        replicate_state: bool = False,
    ) -> None:
        self.layout = layout
        self.replicate_state = replicate_state and layout == "replicated"
        self.group = group
        self.plan = plan
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.owners: dict[int, int] = {}
        self.sent_bytes = 0
        self._loads = [0.0] * self.world
        self.assign(groups)

    def split(self, route: str) -> tuple[Chain, int, int]:
        chain = self.plan.route_named(route).chain
        return (chain, *split_chain(chain))

    def assign(self, groups: Sequence[Mapping[str, Any]]) -> None:
        """Give each new matrix-chain parameter of ``groups`` an owner (LPT over chain cost)."""
        jobs = []
        for group in groups:
            chain, lo, hi = self.split(group["route"])
            if lo < hi:
                jobs += [(chain.cost(tuple(p.shape)), p) for p in group["params"]]
        jobs = [(c, p) for c, p in jobs if id(p) not in self.owners]
        shapes = [tuple(p.shape) for _, p in jobs]
        ranks = assign_owners([c for c, _ in jobs], self.world, self._loads, shapes)
        self.owners.update({id(p): r for (_, p), r in zip(jobs, ranks, strict=True)})

    def owns(self, p: Tensor) -> bool:
        return self.owners.get(id(p), self.rank) == self.rank

    def local_keys(self, chain: Chain, p: Tensor) -> set[str] | None:
        """The state keys (besides ``step``) this rank keeps for ``p``; ``None``: all of the
        chain's, as in a single process."""
        lo, hi = split_chain(chain)
        if lo == hi or (self.layout == "replicated" and self.owns(p)):
            return None
        meta = torch.empty(p.shape, dtype=p.dtype, device="meta")
        if self.layout == "replicated":
            return set(_init_range(chain, 0, lo, meta)) if self.replicate_state else set()
        n = len(chain.transforms)
        keys = set(_init_range(chain, 0, lo, meta)) | set(_init_range(chain, hi, n, meta))
        return keys | set(_init_range(chain, lo, hi, meta)) if self.owns(p) else keys

    def all_finite(self, grads: list[Tensor], check: Callable[[list[Tensor]], bool]) -> bool:
        """Whether every gradient is finite on every rank: one all-reduce of a flag, so that all
        ranks raise or skip together (shards differ between ranks, and a replicated gradient
        may have been changed on one rank only)."""
        flag = torch.tensor([0.0 if check([local_tensor(g) for g in grads]) else 1.0])
        dist.all_reduce(flag, group=self.group)
        return bool(flag.item() == 0.0)

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
        jobs = []
        for group, params in work:
            if not params:
                continue
            chain, lo, hi = self.split(group["route"])
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            job = _Job(chain, lr, lo, hi)
            for name, p in params:
                st = state[p]
                owner = self.owners.get(id(p), self.rank)
                if not st:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)
                    self._init_sharded(chain, lo, hi, p, st, owner)
                st["step"] += 1
                local, grad = p.to_local(), cast(DTensor, p.grad).to_local()
                previous = at_previous.get(p)
                ctx = Ctx(
                    step=int(st["step"].item()),
                    lr=lr,
                    weight_decay=wd,
                    param=local,
                    grad=grad,
                    name=name,
                    grad_at_previous=None if previous is None else local_tensor(previous),
                )
                u = grad.clone(memory_format=torch.preserve_format)
                job.items.append(_Item(name, p, st, ctx, u, owner))
            jobs.append(job)
        self._sharded(jobs)

    def _replicated(
        self,
        state: MutableMapping[Tensor, Any],
        work: Sequence[tuple[Mapping[str, Any], Sequence[tuple[str, Tensor]]]],
        at_previous: Mapping[Tensor, Tensor],
        step_group: Callable[..., None],
    ) -> None:
        """Element-wise groups: every rank. Matrix groups: each owner steps its matrices in
        rounds, one (group, shape) bucket per round, so same-shape matrices still meet in one
        ``apply_many``; round ``k``'s new values travel (an asynchronous all-gather per dtype)
        while round ``k + 1`` computes."""
        buckets: list[dict[tuple[int, tuple[int, ...]], list[tuple[str, Tensor]]]] = [
            {} for _ in range(self.world)
        ]
        for index, (group, params) in enumerate(work):
            if not params:
                continue
            _, lo, hi = self.split(group["route"])
            if lo == hi:
                step_group(group, list(params), at_previous)
                continue
            for name, p in params:
                key = (index, tuple(p.shape))
                buckets[self.owners[id(p)]].setdefault(key, []).append((name, p))
                if not self.owns(p) and not self.replicate_state:
                    st = state[p]  # only the step count, kept on every rank (for DCP)
                    if not st:
                        st["step"] = torch.tensor(0.0, dtype=torch.float32)
                    st["step"] += 1
        prefixed = self._replicated_prefixes(state, work, at_previous)
        rounds = [list(b.items()) for b in buckets]
        pending = []
        for k in range(max((len(r) for r in rounds), default=0)):
            if k < len(rounds[self.rank]):
                (index, _), mine = rounds[self.rank][k]
                if self.replicate_state:
                    job = prefixed[index]
                    items = [job.items[id(p)] for _, p in mine]
                    _run(job.chain, job.lo, len(job.chain.transforms), items, local=False)
                    for it in items:
                        it.p.add_(it.u, alpha=-job.lr)
                else:
                    step_group(work[index][0], mine, at_previous)
            members = [rounds[r][k][1] if k < len(rounds[r]) else [] for r in range(self.world)]
            params = [p for r in range(self.world) for _, p in members[r]]
            owners = [r for r in range(self.world) for _ in members[r]]
            pending += self._all_gather_start(params, owners)
        for finish in pending:
            finish()

    def _replicated_prefixes(
        self,
        state: MutableMapping[Tensor, Any],
        work: Sequence[tuple[Mapping[str, Any], Sequence[tuple[str, Tensor]]]],
        at_previous: Mapping[Tensor, Tensor],
    ) -> dict[int, Any]:
        """With ``replicate_state``: every rank runs the element-wise prefix of every matrix
        chain (its state replicated, bit-identical everywhere); the owner keeps the rest. Returns
        ``{work index: job}`` with each job's items keyed by ``id(p)``."""
        if not self.replicate_state:
            return {}
        out: dict[int, Any] = {}
        for index, (group, params) in enumerate(work):
            chain, lo, hi = self.split(group["route"])
            if not params or lo == hi:
                continue
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            job = _Job(chain, lr, lo, hi)
            n = len(chain.transforms)
            for name, p in params:
                st = state[p]
                if not st:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)
                    st.update(_init_range(chain, 0, lo, p))
                    if self.owns(p):
                        st.update(_init_range(chain, lo, n, p))
                st["step"] += 1
                grad = cast(Tensor, p.grad)
                ctx = Ctx(
                    step=int(st["step"].item()),
                    lr=lr,
                    weight_decay=wd,
                    param=p,
                    grad=grad,
                    name=name,
                    grad_at_previous=at_previous.get(p),
                )
                u = grad.clone(memory_format=torch.preserve_format)
                job.items.append(_Item(name, p, st, ctx, u, self.owners[id(p)]))
            _run(chain, 0, lo, job.items, local=False)
            out[index] = _ByParam(job)
        return out

    def _all_gather_start(
        self, params: list[Tensor], owners: list[int]
    ) -> list[Callable[[], None]]:
        """Start one all-gather per dtype of the owners' values of ``params``; the returned
        calls wait for each and copy the values into the other ranks' parameters."""
        finishes = []
        for dtype in sorted({p.dtype for p in params}, key=str):
            pairs = [(p, o) for p, o in zip(params, owners, strict=True) if p.dtype == dtype]
            sizes = [sum(p.numel() for p, o in pairs if o == r) for r in range(self.world)]
            width = max(sizes)
            if width == 0:
                continue
            device = pairs[0][0].device
            send = torch.zeros(width, dtype=dtype, device=device)
            ours = [p.reshape(-1) for p, o in pairs if o == self.rank]
            if ours:
                torch.cat(ours, out=send[: sizes[self.rank]])
            out = torch.empty(width * self.world, dtype=dtype, device=device)
            handle = dist.all_gather_into_tensor(out, send, group=self.group, async_op=True)
            self.sent_bytes += (self.world - 1) * width * send.element_size()
            finishes.append(functools.partial(self._unpack, handle, out, pairs, width))
        return finishes

    def _unpack(
        self, handle: Any, out: Tensor, pairs: list[tuple[Tensor, int]], width: int
    ) -> None:
        handle.wait()
        offsets = [r * width for r in range(self.world)]
        for p, o in pairs:
            n = p.numel()
            if o != self.rank:
                p.copy_(out[offsets[o] : offsets[o] + n].view(p.shape))
            offsets[o] += n

    # -- FSDP2 --------------------------------------------------------------------------------

    def _init_sharded(
        self, chain: Chain, lo: int, hi: int, p: Tensor, st: MutableMapping[str, Tensor], owner: int
    ) -> None:
        """Element-wise buffers sharded like ``p`` (DTensors); core buffers, full size, on the
        owner only."""
        d = cast(DTensor, p)
        local = d.to_local()
        n = len(chain.transforms)
        for key, buf in {
            **_init_range(chain, 0, lo, local),
            **_init_range(chain, hi, n, local),
        }.items():
            if buf.shape != local.shape:
                raise ValueError(
                    f"element-wise state {key} has shape {tuple(buf.shape)}, not the shard's "
                    f"{tuple(local.shape)}: mark its transform elementwise=False"
                )
            st[key] = DTensor.from_local(
                buf, d.device_mesh, d.placements, run_check=False, shape=d.shape, stride=d.stride()
            )
        if owner == self.rank:
            st.update(
                _init_range(chain, lo, hi, torch.zeros(d.shape, dtype=d.dtype, device=local.device))
            )

    def _sharded(self, jobs: list[_Job]) -> None:
        for job in jobs:
            _run(job.chain, 0, job.lo, job.items, local=True)
        matrix = [job for job in jobs if job.lo < job.hi]
        if matrix:
            self._core(matrix)
        for job in jobs:
            _run(job.chain, job.hi, len(job.chain.transforms), job.items, local=True)
            for it in job.items:
                it.p.to_local().add_(it.u, alpha=-job.lr)

    def _core(self, jobs: list[_Job]) -> None:
        """Gather the core's inputs to their owners, run the core there, send the rows back.

        In rounds, one (job, shape) bucket of every owner per round, so same-shape matrices
        still meet in one ``apply_many``: all gathers start at once (asynchronous, one
        all-to-all per dtype and round), each round's core runs as soon as its inputs are in,
        and its results travel back while the next round computes.
        """
        needs = {id(job): core_reads(job.chain, job.lo, job.hi) for job in jobs}
        buckets: list[dict[tuple[int, tuple[int, ...]], list[_Item]]] = [
            {} for _ in range(self.world)
        ]
        job_of: dict[int, _Job] = {}
        for index, job in enumerate(jobs):
            for it in job.items:
                buckets[it.owner].setdefault((index, tuple(it.p.shape)), []).append(it)
                job_of[id(it)] = job
        rounds = [list(b.items()) for b in buckets]
        count = max((len(r) for r in rounds), default=0)
        members = [
            [it for r in range(self.world) if k < len(rounds[r]) for it in rounds[r][k][1]]
            for k in range(count)
        ]
        gathers = []
        for items in members:
            pieces = []  # per item, what its owner needs of this rank's shard
            for it in items:
                wants_param, wants_grad = needs[id(job_of[id(it)])]
                extra = [it.ctx.param] if wants_param else []
                pieces.append([it.u, *extra, *([it.ctx.grad] if wants_grad else [])])
            gathers.append(self._exchange(items, pieces))
        backs = []
        for k, items in enumerate(members):
            received = gathers[k]()
            position = {id(it): i for i, it in enumerate(items)}
            mine = rounds[self.rank][k] if k < len(rounds[self.rank]) else None
            results: dict[int, Tensor] = {}
            if mine is not None:
                (index, _), owned = mine
                job = jobs[index]
                wants_param, wants_grad = needs[id(job)]
                cores = []
                for it in owned:
                    u, *rest = [torch.cat(shards, 0) for shards in received[position[id(it)]]]
                    meta = torch.empty(it.p.shape, dtype=it.p.dtype, device="meta")
                    param = rest.pop(0) if wants_param else meta
                    grad = rest.pop(0) if wants_grad else meta
                    ctx = Ctx(
                        step=it.ctx.step,
                        lr=it.ctx.lr,
                        weight_decay=it.ctx.weight_decay,
                        param=param,
                        grad=grad,
                        name=it.name,
                    )
                    cores.append(_Item(it.name, it.p, it.state, ctx, u, it.owner))
                _run(job.chain, job.lo, job.hi, cores, local=False)
                for it, core in zip(owned, cores, strict=True):
                    # Non-owners size their receive buffers by the core's input dtype.
                    results[id(it)] = core.u.to(it.u.dtype)
            back = [
                _split_rows(results[id(it)], self.world) if it.owner == self.rank else []
                for it in items
            ]
            backs.append((items, self._exchange_back(items, back)))
        for items, finish in backs:
            for it, u in zip(items, finish(), strict=True):
                it.u = u

    def _exchange(
        self, items: list[_Item], pieces: list[list[Tensor]]
    ) -> Callable[[], list[list[list[Tensor]]]]:
        """Start sending each item's pieces (this rank's shards) to its owner; the returned call
        waits and gives, per item this rank owns, ``[[piece from rank 0, from rank 1, ...] per
        piece kind]`` (rows of each rank's shard), empty lists for the others. One all-to-all
        per dtype."""
        out: list[list[list[Tensor]]] = [[[] for _ in parts] for parts in pieces]
        finishes = []
        for dtype in sorted({t.dtype for parts in pieces for t in parts}, key=str):
            send_parts: list[list[Tensor]] = [[] for _ in range(self.world)]
            recv_plan: list[list[tuple[int, int, tuple[int, ...]]]] = [
                [] for _ in range(self.world)
            ]
            for i, (it, parts) in enumerate(zip(items, pieces, strict=True)):
                for k, t in enumerate(parts):
                    if t.dtype != dtype:
                        continue
                    send_parts[it.owner].append(t.reshape(-1))
                    if it.owner == self.rank:
                        rows = _rows(it.p.shape[0], self.world)
                        for r in range(self.world):
                            recv_plan[r].append((i, k, (rows[r], *it.p.shape[1:])))
            finishes.append(self._all_to_all(dtype, send_parts, recv_plan, out, items))

        def finish() -> list[list[list[Tensor]]]:
            for f in finishes:
                f()
            return out

        return finish

    def _exchange_back(
        self, items: list[_Item], back: list[list[Tensor]]
    ) -> Callable[[], list[Tensor]]:
        """Start sending each rank its rows of the core's results (``back``: per item this rank
        owns, its rows for each rank); the returned call waits and gives this rank's rows of
        every item. One all-to-all per dtype."""
        result: list[list[list[Tensor]]] = [[[]] for _ in items]
        finishes = []
        for dtype in sorted({it.u.dtype for it in items}, key=str):
            send_parts: list[list[Tensor]] = [[] for _ in range(self.world)]
            recv_plan: list[list[tuple[int, int, tuple[int, ...]]]] = [
                [] for _ in range(self.world)
            ]
            for i, it in enumerate(items):
                if it.u.dtype != dtype:
                    continue
                if it.owner == self.rank:
                    for r, rows in enumerate(back[i]):
                        send_parts[r].append(rows.reshape(-1))
                recv_plan[it.owner].append((i, 0, tuple(it.u.shape)))
            finishes.append(self._all_to_all(dtype, send_parts, recv_plan, result, items))

        def finish() -> list[Tensor]:
            for f in finishes:
                f()
            return [parts[0][0] for parts in result]

        return finish

    def _all_to_all(
        self,
        dtype: torch.dtype,
        send_parts: list[list[Tensor]],
        recv_plan: list[list[tuple[int, int, tuple[int, ...]]]],
        out: list[list[list[Tensor]]],
        items: list[_Item],
    ) -> Callable[[], None]:
        """Start one ``all_to_all_single``; the returned call waits and files the received
        pieces into ``out`` as ``recv_plan`` says (per source rank, in order)."""
        device = items[0].u.device
        send_sizes = [sum(t.numel() for t in parts) for parts in send_parts]
        recv_sizes = [sum(math.prod(s) for _, _, s in plan) for plan in recv_plan]
        send = (
            torch.cat([t for parts in send_parts for t in parts])
            if sum(send_sizes)
            else torch.empty(0, dtype=dtype, device=device)
        )
        recv = torch.empty(sum(recv_sizes), dtype=dtype, device=device)
        handle = dist.all_to_all_single(
            recv, send, recv_sizes, send_sizes, group=self.group, async_op=True
        )
        elem = torch.empty((), dtype=dtype).element_size()
        self.sent_bytes += elem * (sum(send_sizes) - send_sizes[self.rank])

        def finish() -> None:
            cast(Any, handle).wait()
            offset = 0
            for plan in recv_plan:
                for i, k, shape in plan:
                    n = math.prod(shape)
                    out[i][k].append(recv[offset : offset + n].view(shape))
                    offset += n

        return finish


def _split_rows(t: Tensor, world: int) -> list[Tensor]:
    """Each rank's ``Shard(0)`` rows of the full tensor ``t``."""
    rows = _rows(t.shape[0], world)
    return list(torch.split(t, rows, 0))


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
