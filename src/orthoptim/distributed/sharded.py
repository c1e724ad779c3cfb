"""The sharded (FSDP2) layout: element-wise transforms on the shards, the matrix core on its
owner, the shards sent there and back with asynchronous all-to-alls, in rounds."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from orthoptim.distributed.owners import core_reads
from orthoptim.distributed.parts import (
    Item,
    Job,
    Topology,
    local_tensor,
    rounds_of,
    run_range,
    shard_rows,
    split_rows,
    update_params,
)
from orthoptim.recipes.plan import group_layout, group_lr, live_chain
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.chain import Chain


class ShardedSteps(Topology):
    """``DistributedStep``'s sharded layout (see ``orthoptim.distributed.engine``)."""

    def _sharded_step(
        self,
        state: MutableMapping[Tensor, Any],
        work: Sequence[tuple[Mapping[str, Any], Sequence[tuple[str, Tensor]]]],
        at_previous: Mapping[Tensor, Tensor],
    ) -> None:
        """Prefix on the shards, core on the owners (``_core``), tail on the shards."""
        jobs = []
        for group, params in work:
            if not params:
                continue
            chain, lo, hi = self.split(group["route"])
            chain = live_chain(chain, group)
            lr, wd = group_lr(group), float(group["weight_decay"])
            job = Job(chain, lr, lo, hi, group_layout(group))
            for name, p in params:
                st = state[p]
                owner = self.owners.get(id(p), self.rank)
                if not st:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)
                    self._init_sharded(chain, lo, hi, p, st, owner, job.layout)
                st["step"] += 1
                local, grad = cast(DTensor, p).to_local(), cast(DTensor, p.grad).to_local()
                previous = at_previous.get(p)
                ctx = Ctx(
                    step=int(st["step"].item()),
                    lr=lr,
                    weight_decay=wd,
                    param=local,
                    grad=grad,
                    name=name,
                    grad_at_previous=None if previous is None else local_tensor(previous),
                    layout=job.layout,
                    position=self.positions[id(p)][0],
                    route_size=self.positions[id(p)][1],
                )
                u = grad.clone(memory_format=torch.preserve_format)
                job.items.append(Item(name, p, st, ctx, u, owner))
            jobs.append(job)
        self._sharded(jobs)

    def _init_sharded(
        self,
        chain: Chain,
        lo: int,
        hi: int,
        p: Tensor,
        st: MutableMapping[str, Tensor],
        owner: int,
        layout: str,
    ) -> None:
        """Element-wise buffers sharded like ``p`` (DTensors); core buffers, full size, on the
        owner only."""
        d = cast(DTensor, p)
        local = d.to_local()
        n = len(chain.transforms)
        for key, buf in {
            **chain.init_range(0, lo, local),
            **chain.init_range(hi, n, local),
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
            full = torch.zeros(d.shape, dtype=d.dtype, device=local.device)
            st.update(chain.init_range(lo, hi, full, layout))

    def _sharded(self, jobs: list[Job]) -> None:
        for job in jobs:
            run_range(job.chain, 0, job.lo, job.items, local=True)
        matrix = [job for job in jobs if job.lo < job.hi]
        if matrix:
            self._core(matrix)
        for job in jobs:
            run_range(job.chain, job.hi, job.chain.fold_from, job.items, local=True)
            update_params(job.chain, job.items, job.lr, local=True)

    def _core(self, jobs: list[Job]) -> None:
        """Gather the core's inputs to their owners, run the core there, send the rows back.

        In rounds, one (job, shape) bucket of every owner per round, so same-shape matrices
        still meet in one ``apply_many``: all gathers start at once (asynchronous, one
        all-to-all per dtype and round), each round's core runs as soon as its inputs are in,
        and its results travel back while the next round computes.
        """
        needs = {id(job): core_reads(job.chain, job.lo, job.hi) for job in jobs}
        buckets: list[dict[tuple[int, tuple[int, ...]], list[Item]]] = [
            {} for _ in range(self.world)
        ]
        job_of: dict[int, Job] = {}
        for index, job in enumerate(jobs):
            for it in job.items:
                buckets[it.owner].setdefault((index, tuple(it.p.shape)), []).append(it)
                job_of[id(it)] = job
        rounds = [rounds_of(b) for b in buckets]
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
            results = {} if mine is None else self._run_owned(jobs, mine, received, position, needs)
            back = [
                split_rows(results[id(it)], self.world) if it.owner == self.rank else []
                for it in items
            ]
            backs.append((items, self._exchange_back(items, back)))
        for items, finish in backs:
            for it, u in zip(items, finish(), strict=True):
                it.u = u

    @staticmethod
    def _run_owned(
        jobs: list[Job],
        mine: tuple[tuple[int, tuple[int, ...]], list[Item]],
        received: list[list[list[Tensor]]],
        position: dict[int, int],
        needs: dict[int, tuple[bool, bool]],
    ) -> dict[int, Tensor]:
        """This rank's bucket of one round: each full matrix from the received rows, the core
        run on them together; ``{id(item): its update}`` in the item's dtype."""
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
                layout=job.layout,
                position=it.ctx.position,
                route_size=it.ctx.route_size,
            )
            cores.append(Item(it.name, it.p, it.state, ctx, u, it.owner))
        run_range(job.chain, job.lo, job.hi, cores, local=False)
        # Non-owners size their receive buffers by the core's input dtype.
        return {id(it): core.u.to(it.u.dtype) for it, core in zip(owned, cores, strict=True)}

    def _exchange(
        self, items: list[Item], pieces: list[list[Tensor]]
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
                        rows = shard_rows(it.p.shape[0], self.world)
                        for r in range(self.world):
                            recv_plan[r].append((i, k, (rows[r], *it.p.shape[1:])))
            finishes.append(self._all_to_all(dtype, send_parts, recv_plan, out, items))

        def finish() -> list[list[list[Tensor]]]:
            for f in finishes:
                f()
            return out

        return finish

    def _exchange_back(
        self, items: list[Item], back: list[list[Tensor]]
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
        items: list[Item],
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
        self.sent_bytes += dtype.itemsize * (sum(send_sizes) - send_sizes[self.rank])

        def finish() -> None:
            cast(Any, handle).wait()
            offset = 0
            for plan in recv_plan:
                for i, k, shape in plan:
                    n = math.prod(shape)
                    out[i][k].append(recv[offset : offset + n].view(shape))
                    offset += n

        return finish
