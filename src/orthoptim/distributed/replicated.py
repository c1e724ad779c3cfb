"""The replicated (DDP) layout: owners step their matrices in rounds, the new values are
all-gathered (asynchronously, one round behind the compute)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from orthoptim.distributed.parts import (
    ByParam,
    Item,
    Job,
    Topology,
    all_gather_single,
    rounds_of,
    run_range,
    update_params,
)
from orthoptim.recipes.plan import group_layout, group_lr, live_chain
from orthoptim.transforms.base import Ctx


class ReplicatedSteps(Topology):
    """``DistributedStep``'s replicated layout (see ``orthoptim.distributed.engine``)."""

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
        rounds = [rounds_of(b) for b in buckets]
        pending = []
        for k in range(max((len(r) for r in rounds), default=0)):
            if k < len(rounds[self.rank]):
                (index, _), mine = rounds[self.rank][k]
                if self.replicate_state:
                    job = prefixed[index]
                    items = [job.items[id(p)] for _, p in mine]
                    run_range(job.chain, job.lo, job.chain.fold_from, items, local=False)
                    update_params(job.chain, items, job.lr, local=False)
                else:
                    step_group(work[index][0], mine, at_previous)
            members = [rounds[r][k][1] if k < len(rounds[r]) else [] for r in range(self.world)]
            gathered = [p for r in range(self.world) for _, p in members[r]]
            owners = [r for r in range(self.world) for _ in members[r]]
            pending += self._all_gather_start(gathered, owners)
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
            chain = live_chain(chain, group)
            if not params or lo == hi:
                continue
            lr, wd = group_lr(group), float(group["weight_decay"])
            job = Job(chain, lr, lo, hi, group_layout(group))
            n = len(chain.transforms)
            for name, p in params:
                st = state[p]
                if not st:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)
                    st.update(chain.init_range(0, lo, p))
                    if self.owns(p):
                        st.update(chain.init_range(lo, n, p, job.layout))
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
                    layout=job.layout,
                    position=self.positions[id(p)][0],
                    route_size=self.positions[id(p)][1],
                )
                u = grad.clone(memory_format=torch.preserve_format)
                job.items.append(Item(name, p, st, ctx, u, self.owners[id(p)]))
            run_range(chain, 0, lo, job.items, local=False)
            out[index] = ByParam(job)
        return out

    def _all_gather_start(
        self, params: list[Tensor], owners: list[int]
    ) -> list[Callable[[], None]]:
        """Start one all-gather per dtype of the owners' values of ``params``; the returned
        calls wait for each and copy the values into the other ranks' parameters."""
        finishes: list[Callable[[], None]] = []
        for dtype in sorted({p.dtype for p in params}, key=str):
            pairs = [(p, o) for p, o in zip(params, owners, strict=True) if p.dtype == dtype]
            sizes = [sum(p.numel() for p, o in pairs if o == r) for r in range(self.world)]
            width = max(sizes)
            if width == 0:
                continue
            device = pairs[0][0].device
            # Only the padding is zeroed: the owner's values overwrite the rest, and a full
            # zero fill was a third of the step's copying on a CPU (issue 18's profile).
            send = torch.empty(width, dtype=dtype, device=device)
            send[sizes[self.rank] :].zero_()
            ours = [p.reshape(-1) for p, o in pairs if o == self.rank]
            if ours:
                torch.cat(ours, out=send[: sizes[self.rank]])
            out = torch.empty(width * self.world, dtype=dtype, device=device)
            handle = all_gather_single(out, send, group=self.group, async_op=True)
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
