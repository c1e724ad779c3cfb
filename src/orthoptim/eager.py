"""The eager path: one chain over one param group's parameters, from each gradient's working
copy to ``theta <- theta - lr * u``. The truth every batched, fused or distributed path is
tested against."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, cast

import torch
from torch import Tensor

from orthoptim._types import State
from orthoptim.functional import multi_tensor
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.chain import Chain

Recorder = Callable[[Tensor, str, Tensor], None]
"""``(parameter, figure, value)``: where a telemetry step's transforms report (``Ctx.record``)."""


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
    foreach: bool = False,
    positions: Mapping[int, tuple[int, int]] | None = None,
    hvps: Mapping[Tensor, tuple[Tensor, Tensor]] | None = None,
    record: Recorder | None = None,
) -> None:
    """Update each ``(name, p)`` of ``params`` by ``chain``, its ``state`` already counting
    this step: transform-major over the group where a transform works on the group together
    (``Chain.groupwise``), else one parameter at a time; with ``foreach``, the chain's
    element-wise ends with multi-tensor ops over the group (``run_foreach``). Either way the
    chain's trailing scale and decay are folded into the final update (``descend_``).
    ``capturable``: the transforms get the step counter itself (a device tensor), and ``lr``
    may be a tensor: no host read; it runs the single-tensor path (a compiled step fuses the
    element-wise passes itself). ``positions``: ``Ctx.position`` and ``Ctx.route_size`` by
    ``id(p)`` (``groups.route_positions``); without them each parameter is alone. ``hvps``:
    ``Ctx.hvp`` by parameter (``orthoptim.hvp``). ``record``: on a telemetry step, what each
    parameter's ``Ctx.record`` reports to, with the parameter first (``telemetry.Probe``)."""
    tensors = [p for _, p in params]
    ctxs = _contexts(
        params,
        states,
        lr,
        weight_decay,
        layout,
        at_previous,
        positions,
        capturable,
        foreach,
        hvps,
        record,
    )
    if foreach and not capturable:
        run_foreach(chain, tensors, states, ctxs, cast(float, lr))
        return
    fold = chain.fold_from
    if chain.groupwise:
        updates = [c.grad.clone(memory_format=torch.preserve_format) for c in ctxs]
        updates = chain.apply_narrow_range(0, fold, updates, states, ctxs)
        for p, u, c in zip(tensors, updates, ctxs, strict=True):
            descend_(p, u, lr, *chain.folded(c))
        return
    # One parameter at a time, from the gradient's working copy to the update: one working
    # copy is alive at once instead of one per parameter (the transient peak,
    # benchmarks/records/2026-11-25_step-speed-2), and the copies share one buffer instead of
    # a fresh full-size tensor per parameter, whose allocation and first touch show in the
    # step time (benchmarks/records/2026-11-25_step-speed-3).
    # Under capturable (a compiled step) each working copy is its own tensor instead: views of
    # one shared buffer serialise inductor's kernels (adamw, 23.1M parameters: 313 ms per
    # compiled step against 22 ms, benchmarks/records/2026-12-06_gpu-ready-steps).
    scratch = _Scratch([c.grad for c in ctxs])
    for p, state, c in zip(tensors, states, ctxs, strict=True):
        # a chain folded whole (SGD without momentum) only reads the gradient
        if fold == 0:
            u = c.grad
        elif capturable:
            u = c.grad.clone(memory_format=torch.preserve_format)
        else:
            u = scratch.copy_of(c.grad)
        u = chain.apply_narrow_range(0, fold, [u], [state], [c])[0] if fold else u
        descend_(p, u, lr, *chain.folded(c))


def _contexts(
    params: Sequence[tuple[str, Tensor]],
    states: Sequence[State],
    lr: float | Tensor,
    weight_decay: float,
    layout: str,
    at_previous: Mapping[Tensor, Tensor] | None,
    positions: Mapping[int, tuple[int, int]] | None,
    capturable: bool = False,
    foreach: bool = False,
    hvps: Mapping[Tensor, tuple[Tensor, Tensor]] | None = None,
    record: Recorder | None = None,
) -> list[Ctx]:
    """Each parameter's ``Ctx`` for this step (``run_chain``'s arguments): the step counter as
    an int, or the device tensor itself under ``capturable``; ``positions``, ``hvps``, ``record`` as
    ``run_chain``'s."""
    return [
        Ctx(
            state["step"] if capturable else int(state["step"].item()),
            lr,
            weight_decay,
            p,
            cast(Tensor, p.grad),
            name,
            None if at_previous is None else at_previous.get(p),
            layout,
            multi_tensor=foreach and not capturable,
            position=where[0],
            route_size=where[1],
            hvp=None if hvps is None else hvps.get(p),
            record=None if record is None else functools.partial(record, p),
        )
        for (name, p), state in zip(params, states, strict=True)
        for where in [(0, 1) if positions is None else positions[id(p)]]
    ]


class GroupStep(NamedTuple):
    """One param group's part of a route-wide step (``run_route``): its live chain, the
    parameters that have gradients, their states (already counting this step), and the
    group's lr, weight decay and layout."""

    chain: Chain
    params: Sequence[tuple[str, Tensor]]
    states: Sequence[State]
    lr: float
    weight_decay: float
    layout: str


def run_route(
    groups: Sequence[GroupStep],
    at_previous: Mapping[Tensor, Tensor] | None,
    positions: Mapping[int, tuple[int, int]] | None = None,
    hvps: Mapping[Tensor, tuple[Tensor, Tensor]] | None = None,
    record: Recorder | None = None,
) -> None:
    """``run_chain`` over all of a route's param groups at once, for a chain whose matrix core
    needs the route's parameters together (``Chain.route_wide``: M-FAC's model-wide block):
    each group's element-wise prefix and suffix with its own live chain (the moment
    coefficients a scheduler sets per group), the core once over every group's parameters,
    and each parameter's final update with its group's lr and decay. One parameter's working
    copy per parameter alive at once, as on ``run_chain``'s transform-major path; no
    multi-tensor ops (the core's m x m work and window products dominate its step).
    ``positions``, ``hvps``, ``record``: as ``run_chain``'s.

    ``ValueError`` where the groups' live chains differ inside the core: one core cannot run
    with two sets of coefficients."""
    first = groups[0].chain
    fold = first.fold_from
    lo, hi = (min(i, fold) for i in first.core)
    core = first.transforms[lo:hi]
    for group in groups[1:]:
        if group.chain.transforms[lo:hi] != core:
            raise ValueError(
                "the param groups of a route-wide chain hold different coefficients for its "
                f"matrix core ({group.chain.transforms[lo:hi]} against {core}); they run as "
                "one block and need the same ones"
            )
    parts = []
    for group in groups:
        ctxs = _contexts(
            group.params,
            group.states,
            group.lr,
            group.weight_decay,
            group.layout,
            at_previous,
            positions,
            hvps=hvps,
            record=record,
        )
        updates = [c.grad.clone(memory_format=torch.preserve_format) for c in ctxs]
        parts.append((ctxs, group.chain.apply_range(0, lo, updates, group.states, ctxs)))
    flat = first.apply_range(
        lo,
        hi,
        [u for _, us in parts for u in us],
        [s for group in groups for s in group.states],
        [c for ctxs, _ in parts for c in ctxs],
    )
    start = 0
    for group, (ctxs, _) in zip(groups, parts, strict=True):
        us = flat[start : start + len(ctxs)]
        start += len(ctxs)
        us = group.chain.apply_range(hi, fold, us, group.states, ctxs)
        for (_, p), u, c in zip(group.params, us, ctxs, strict=True):
            descend_(p, u, group.lr, *group.chain.folded(c))


def descend_(
    p: Tensor, u: Tensor, lr: float | Tensor, scale: float = 1.0, decay: float = 0.0
) -> None:
    """``theta <- theta - lr (scale u + decay theta)`` in place, as ``theta (1 - lr decay) -
    lr scale u`` (``Chain.folded``): the decay as torch's AdamW and Muon apply it, the scale
    inside the update's one pass. Equal to the chain's separate passes to round-off; with
    neither, ``theta - lr u`` bit for bit. A tensor ``lr`` (capturable) stays on the device."""
    if decay != 0:
        p.mul_(1.0 - lr * decay)
    if isinstance(lr, Tensor):
        p.addcmul_(u, lr if scale == 1.0 else lr * scale, value=-1.0)
    else:
        p.add_(u, alpha=-lr * scale)


def run_foreach(
    chain: Chain,
    tensors: list[Tensor],
    states: Sequence[State],
    ctxs: list[Ctx],
    lr: float,
) -> None:
    """``run_chain`` with multi-tensor ops: the working copies made in one op, the chain's
    element-wise prefix and suffix transform-major over the group (``TransformBase.
    apply_foreach``), the matrix core one parameter at a time (transform-major where it is
    ``groupwise``), and the folded final update as a few ops for the whole group. Every
    working copy is alive at once, as in torch's foreach optimizers (the one-at-a-time path
    keeps one)."""
    fold = chain.fold_from
    head, tail = chain.multi_tensor_span()
    grads = [c.grad for c in ctxs]
    if fold == 0:
        us = grads  # nothing writes the update: the final step reads the gradients
    else:
        us = [torch.empty_like(g, memory_format=torch.preserve_format) for g in grads]
        torch._foreach_copy_(us, grads)
    us = chain.apply_foreach_range(0, head, us, states, ctxs)
    if head < tail:
        run = chain.apply_narrow_range if tail == fold else chain.apply_range
        if chain.groupwise or chain.batches:
            us = run(head, tail, us, states, ctxs)
        else:
            us = [
                run(head, tail, [u], [s], [c])[0] for u, s, c in zip(us, states, ctxs, strict=True)
            ]
    us = chain.apply_foreach_range(tail, fold, us, states, ctxs)
    folds = [chain.folded(c) for c in ctxs]
    if any(decay != 0 for _, decay in folds):
        multi_tensor.mul_(tensors, [1.0 - lr * decay for _, decay in folds])
    by_scale: dict[float, list[int]] = {}
    for i, (scale, _) in enumerate(folds):
        by_scale.setdefault(scale, []).append(i)
    for scale, members in by_scale.items():
        torch._foreach_add_(
            [tensors[i] for i in members], [us[i] for i in members], alpha=-lr * scale
        )
