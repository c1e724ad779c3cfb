"""The eager path: one chain over one param group's parameters, from each gradient's working
copy to ``theta <- theta - lr * u``. The truth every batched, fused or distributed path is
tested against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import Tensor

from orthoptim._types import State
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.chain import Chain


class _Scratch:
    """One flat buffer per device and dtype, as large as the largest of ``grads``, holding the
    working copy of one gradient at a time (non-contiguous gradients get their own clone, which
    keeps their memory format)."""

    def __init__(self, grads: list[Tensor]) -> None:
        self._sizes: dict[tuple[torch.device, torch.dtype], int] = {}
        for g in grads:
            key = (g.device, g.dtype)
            self._sizes[key] = max(self._sizes.get(key, 0), g.numel())
        self._buffers: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def copy_of(self, grad: Tensor) -> Tensor:
        if not grad.is_contiguous():
            return grad.clone(memory_format=torch.preserve_format)
        key = (grad.device, grad.dtype)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(
                self._sizes[key], dtype=grad.dtype, device=grad.device
            )
        return buffer[: grad.numel()].view(grad.shape).copy_(grad)


def run_chain(
    chain: Chain,
    params: Sequence[tuple[str, Tensor]],
    states: Sequence[State],
    lr: float | Tensor,
    weight_decay: float,
    layout: str,
    at_previous: Mapping[Tensor, Tensor] | None,
    capturable: bool = False,
) -> None:
    """Update each ``(name, p)`` of ``params`` by ``chain``, its ``state`` already counting
    this step: transform-major over the group where a transform works on the group together
    (``Chain.groupwise``), else one parameter at a time. ``capturable``: the transforms get the
    step counter itself (a device tensor), and ``lr`` may be a tensor: no host read."""
    tensors = [p for _, p in params]
    ctxs = [
        Ctx(
            state["step"] if capturable else int(state["step"].item()),
            lr,
            weight_decay,
            p,
            cast(Tensor, p.grad),
            name,
            None if at_previous is None else at_previous.get(p),
            layout,
        )
        for (name, p), state in zip(params, states, strict=True)
    ]
    if chain.groupwise:
        updates = [c.grad.clone(memory_format=torch.preserve_format) for c in ctxs]
        updates = chain.apply_many(updates, states, ctxs)
        for p, u in zip(tensors, updates, strict=True):
            descend_(p, u, lr)
        return
    # One parameter at a time, from the gradient's working copy to the update: one working
    # copy is alive at once instead of one per parameter (the transient peak,
    # benchmarks/records/2026-11-25_step-speed-2), and the copies share one buffer instead of
    # a fresh full-size tensor per parameter, whose allocation and first touch show in the
    # step time (benchmarks/records/2026-11-25_step-speed-3).
    scratch = _Scratch([c.grad for c in ctxs])
    for p, state, c in zip(tensors, states, ctxs, strict=True):
        descend_(p, chain.apply(scratch.copy_of(c.grad), state, c), lr)


def descend_(p: Tensor, u: Tensor, lr: float | Tensor) -> None:
    """``theta <- theta - lr u`` in place; a tensor ``lr`` (capturable) stays on the device."""
    if isinstance(lr, Tensor):
        p.addcmul_(u, lr, value=-1.0)
    else:
        p.add_(u, alpha=-lr)
