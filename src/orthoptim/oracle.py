"""The shell's side of a plan's gradient estimator (``transforms.estimator``): the closure as a
``LossOracle``, and the estimate written to the parameters' ``.grad`` before the routes step.

``step(closure)`` runs the closure once as for any optimizer; where the plan has an estimator,
``estimate_gradients`` then gives it a ``ClosureOracle`` over every trainable parameter of the
optimizer, and writes what it returns to ``.grad``: the routes, the non-finite check and
telemetry see the estimate as the step's gradient (and a user reading ``.grad`` after the step
sees the gradient the update used, as after SAM's second step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from orthoptim.recipes.plan import group_lr
from orthoptim.transforms.estimator import EstimatorGroup, GradientEstimator

PREFIX = "estimator."


class ClosureOracle:
    """``LossOracle`` over ``params`` (every trainable parameter of the optimizer), from the
    step's closure and the loss of its first call."""

    def __init__(
        self, closure: Callable[[], Any], params: Sequence[Tensor], loss: Any, graph: bool
    ) -> None:
        self._closure = closure
        self._params = list(params)
        self._loss = loss.detach() if isinstance(loss, Tensor) else None
        self._graph = graph
        self._calls = 1

    @property
    def loss(self) -> Tensor | None:
        return self._loss

    @property
    def evaluations(self) -> int:
        return self._calls

    def gradients_at(
        self, points: Mapping[Tensor, Tensor], wanted: Sequence[Tensor]
    ) -> tuple[Tensor | None, list[Tensor]]:
        with self._moved(points):
            with torch.enable_grad():
                loss = self._closure()
            # the closure's own fresh gradients (see _moved): nothing else holds them
            found = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in wanted]
        return (loss.detach() if isinstance(loss, Tensor) else None), found

    def loss_at(self, points: Mapping[Tensor, Tensor]) -> Tensor:
        with self._moved(points), torch.no_grad():
            loss = self._closure()
        if not isinstance(loss, Tensor):
            raise ValueError(f"the closure must return the loss as a tensor, got {type(loss)}")
        return loss.detach()

    def hessian_vector_products(self, vectors: Mapping[Tensor, Tensor]) -> dict[Tensor, Tensor]:
        if not self._graph:
            raise ValueError(
                "this estimator reads Hessian-vector products: the closure must call "
                "loss.backward(create_graph=True)"
            )
        keys = list(vectors)
        pairs = [(p.grad, vectors[p]) for p in keys if p.grad is not None and p.grad.requires_grad]
        if not pairs:
            return {p: torch.zeros_like(p) for p in keys}
        with torch.enable_grad():
            products = torch.autograd.grad(
                [g for g, _ in pairs],
                keys,
                grad_outputs=[v for _, v in pairs],
                retain_graph=True,
                allow_unused=True,
                materialize_grads=True,
            )
        return {p: h.detach() for p, h in zip(keys, products, strict=True)}

    @contextmanager
    def _moved(self, points: Mapping[Tensor, Tensor]) -> Iterator[None]:
        """The parameters of ``points`` there and every ``.grad`` set aside while the closure
        runs, both put back after (also on error). Nothing is copied: each moved parameter's
        ``.data`` is swapped for its point and back (no version bump, so a graph the first
        closure kept for Hessian-vector products stays usable), and the closure's
        ``zero_grad`` and ``backward`` meet no gradient, so they write fresh tensors and never
        the step's own (whether the closure zeroes in place or sets them to ``None``)."""
        moved = []
        for p, point in points.items():
            if point.shape != p.shape:
                raise ValueError(
                    f"a point of shape {tuple(point.shape)} for a parameter of shape "
                    f"{tuple(p.shape)}"
                )
            moved.append((p, p.data, point.to(p.dtype)))
        held = [(p, p.grad) for p in self._params]
        try:
            for p, _ in held:
                p.grad = None
            for p, _, point in moved:
                p.data = point
            self._calls += 1
            yield
        finally:
            for p, data, _ in moved:
                p.data = data
            for p, g in held:
                p.grad = g


def check_estimator_closure(
    estimator: GradientEstimator, closure: Callable[[], Any] | None
) -> None:
    """``ValueError`` before anything changes where the plan estimates its gradients and no
    closure was given."""
    if closure is None:
        how = (
            "returns the loss without calling backward"
            if not estimator.closure_backward
            else "calls loss.backward(create_graph=True)"
            if estimator.needs_graph
            else "calls loss.backward()"
        )
        raise ValueError(
            f"{type(estimator).__name__} evaluates the loss more than once per step: call "
            f"step(closure) with a closure that zeroes the gradients, computes the loss and {how}"
        )


def estimate_gradients(
    estimator: GradientEstimator,
    state: Mapping[Tensor, dict[str, Tensor]],
    param_groups: Sequence[Mapping[str, Any]],
    closure: Callable[[], Any],
    loss: Any,
    fresh_state: Callable[[Mapping[str, Any], Tensor], dict[str, Tensor]],
) -> Callable[[], None]:
    """Run ``estimator`` after the closure's first call and write its estimate to ``.grad``;
    returns what commits the estimator's buffers, which the shell calls once the step is
    applied (a refused or skipped step leaves them as they were).

    The parameters it sees: with ``closure_backward``, those the closure gave a gradient;
    without, every parameter that requires one. The estimator works on copies of its buffers
    (``fresh_state(group, p)``'s, the shell's first-step state, for a parameter without one)."""
    groups: list[EstimatorGroup] = []
    graph = False
    for group in param_groups:
        params = [
            p
            for p in group["params"]
            if (p.grad is not None if estimator.closure_backward else p.requires_grad)
        ]
        own = []
        for p in params:
            buffers = state[p] if state.get(p) else fresh_state(group, p)
            own.append(
                {
                    k.removeprefix(PREFIX): v.clone()
                    for k, v in buffers.items()
                    if k.startswith(PREFIX)
                }
            )
            graph = graph or (p.grad is not None and p.grad.requires_grad)
        grads = [p.grad for p in params]
        groups.append(EstimatorGroup(params, grads, own, group_lr(group)))
    if estimator.needs_graph and any(g.params for g in groups) and not graph:
        raise ValueError(
            "the gradients carry no graph, so no Hessian-vector product can be taken: the "
            "closure must call loss.backward(create_graph=True)"
        )
    every = [p for group in param_groups for p in group["params"] if p.requires_grad]
    oracle = ClosureOracle(closure, every, loss, graph)
    counters = [state[p]["step"] for g in groups for p in g.params if state.get(p)]
    step = int(counters[0].item()) + 1 if counters else 1
    try:
        estimates = estimator.estimate(oracle, groups, step)
    finally:
        for p in every:  # the graph of backward(create_graph=True) ends with the step
            if p.grad is not None and p.grad.grad_fn is not None:
                p.grad = p.grad.detach()
    for seen, found in zip(groups, estimates, strict=True):
        for p, g in zip(seen.params, found, strict=True):
            p.grad = g.to(p.dtype)

    def commit() -> None:
        for seen in groups:
            for p, buffers in zip(seen.params, seen.states, strict=True):
                state[p].update({PREFIX + k: v for k, v in buffers.items()})

    return commit
