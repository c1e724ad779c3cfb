"""Saddle-free Newton as a plan-level gradient estimator (``transforms.estimator``).

Dauphin, Pascanu, Gulcehre, Cho, Ganguli, Bengio, "Identifying and attacking the saddle point
problem in high-dimensional non-convex optimization" (NeurIPS 2014, arXiv 1406.2572); the
workshop version: "On the saddle point problem for non-convex optimization" (arXiv 1405.4604).
The maths is ``functional.saddle_free``; this module runs it over every parameter the optimizer
steps (one Krylov space for the whole model) with the closure's Hessian-vector products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from orthoptim._checks import check_choice, check_positive, check_positive_int
from orthoptim.functional.psgd import probe
from orthoptim.functional.saddle_free import (
    OUTSIDE,
    REORTHOGONALIZE,
    Outside,
    Reorthogonalize,
    candidate_directions,
    lanczos,
)
from orthoptim.transforms.estimator import EstimatorGroup, GradientEstimator, LossOracle

DampingRule = Literal["line_search", "fixed"]
DAMPING_RULES: tuple[str, ...] = ("line_search", "fixed")
Start = Literal["gradient", "random"]
STARTS: tuple[str, ...] = ("gradient", "random")


@dataclass(frozen=True, kw_only=True)
class SaddleFreeNewton(GradientEstimator):
    """The direction ``d = V (|T| + lambda I)^{-1} V^T g`` of the paper's Algorithm 1 over the
    whole model (``functional.saddle_free``), which the plan's routes step on (the recipe: SGD
    without momentum at lr 1, so ``theta <- theta - d``).

    Per step: the closure's gradient ``g`` (one forward, one backward with
    ``create_graph=True``), ``k`` Lanczos steps from ``g / ||g||`` (``k`` Hessian-vector
    products, each a double backward through that graph), the eigendecomposition of the
    ``k x k`` tridiagonal ``T``, then the damping: ``damping_rule="line_search"`` (the paper's
    ``lambda <- argmin_lambda f(theta - V (|T| + lambda I)^{-1} V^T g)``) evaluates the loss at
    the step of each of ``dampings`` (one closure call each: forward and backward, since the
    closure calls backward) and keeps the lowest, chosen on the device (no host read);
    ``"fixed"`` uses ``damping``. Memory: the ``k x n`` Lanczos basis and a few ``n``-vectors
    (``n`` the model's parameter count), transient; no state is kept between steps.

    Args:
        k: Lanczos vectors (Krylov dimension), at most the parameter count (clamped).
        damping_rule: ``"line_search"`` (the paper's) or ``"fixed"``.
        dampings: the line search's candidate ``lambda`` values.
        damping: the fixed rule's ``lambda``.
        start: ``"gradient"`` (the paper's: the space is ``span{g, Hg, ..., H^{k-1} g}``) or
            ``"random"`` (``N(0, I)`` from a generator seeded by ``seed`` and the step, so a
            resumed run draws the same).
        outside: what the step does with the part of ``g`` outside the space: ``"drop"`` (the
            paper's: it steps in the space only) or ``"gradient"`` (a plain gradient step
            there). Starting from ``g`` there is no such part.
        reorthogonalize: ``"full"`` (each Lanczos vector against all before it) or ``"none"``
            (the paper's plain recurrence).
        seed: the random start's seed.
    """

    needs_graph: ClassVar[bool] = True

    k: int = 20
    damping_rule: DampingRule = "line_search"
    dampings: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    damping: float = 1e-1
    start: Start = "gradient"
    outside: Outside = "drop"
    reorthogonalize: Reorthogonalize = "full"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)
        check_choice("damping_rule", self.damping_rule, DAMPING_RULES)
        if not isinstance(self.dampings, tuple) or not self.dampings:
            raise ValueError(f"dampings must be a non-empty tuple of floats, got {self.dampings!r}")
        for i, value in enumerate(self.dampings):
            check_positive(f"dampings[{i}]", value)
        check_positive("damping", self.damping)
        check_choice("start", self.start, STARTS)
        check_choice("outside", self.outside, OUTSIDE)
        check_choice("reorthogonalize", self.reorthogonalize, REORTHOGONALIZE)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def passes(self) -> str:
        extra = len(self.dampings) if self.damping_rule == "line_search" else 0
        return (
            f"{1 + extra} forward, {1 + extra} backward (create_graph=True), "
            f"{self.k} Hessian-vector products (double backward)"
        )

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        params = [p for group in groups for p in group.params]
        if not params:
            return [[] for _ in groups]
        lrs = [group.lr for group in groups for _ in group.params]
        dtype = _flat_dtype(params)
        g = torch.cat(
            [
                (torch.zeros_like(p) if grad is None else grad.detach()).reshape(-1).to(dtype)
                for group in groups
                for p, grad in zip(group.params, group.grads, strict=True)
            ]
        )
        # A NaN or Inf gradient goes to the routes as it is (the optimizer's non-finite check
        # then names its parameter and refuses or skips the step); the Krylov work runs on
        # zeros meanwhile, as nothing is read on the host to skip it.
        finite = torch.isfinite(g).all()
        g_in = g
        g = torch.where(finite, g, 0.0)
        sizes = [p.numel() for p in params]
        n = g.numel()
        k = min(self.k, n)

        def hvp(v: Tensor) -> Tensor:
            pieces = v.split(sizes)
            vectors = {p: x.view_as(p).to(p.dtype) for p, x in zip(params, pieces, strict=True)}
            products = oracle.hessian_vector_products(vectors)
            return torch.cat([products[p].reshape(-1).to(dtype) for p in params])

        start = g if self.start == "gradient" else probe((n,), self.seed, step, dtype, g.device)
        vs, alpha, beta = lanczos(hvp, start, k, reorthogonalize=self.reorthogonalize)
        rule = self.damping_rule == "line_search"
        ys, rest = candidate_directions(
            vs, alpha, beta, g, self.dampings if rule else (self.damping,), outside=self.outside
        )
        y = ys[:, 0]
        if rule:
            y = ys.index_select(1, _best(oracle, params, sizes, lrs, vs, ys, rest))[:, 0]
        d = torch.where(finite, vs.mT @ y.to(dtype) + rest, g_in)
        out: list[list[Tensor]] = []
        pieces = iter(d.split(sizes))
        for group in groups:
            out.append([next(pieces).view_as(p).to(p.dtype) for p in group.params])
        return out


def _flat_dtype(params: Sequence[Tensor]) -> torch.dtype:
    """float32 at least (16-bit parameters' Krylov vectors would lose orthogonality at once),
    float64 where a parameter is."""
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def _best(
    oracle: LossOracle,
    params: Sequence[Tensor],
    sizes: Sequence[int],
    lrs: Sequence[float],
    vs: Tensor,
    ys: Tensor,
    rest: Tensor,
) -> Tensor:
    """The index (a 1-element device tensor) of the damping whose step ``theta - lr d`` has
    the lowest loss; a non-finite loss never wins (all non-finite: the first)."""
    losses = []
    for j in range(ys.shape[1]):
        d = vs.mT @ ys[:, j].to(vs.dtype) + rest
        points = {
            p: p.detach() - lr * x.view_as(p).to(p.dtype)
            for p, x, lr in zip(params, d.split(sizes), lrs, strict=True)
        }
        loss, _ = oracle.gradients_at(points, [])
        if loss is None:
            raise ValueError(
                "damping_rule='line_search' compares the loss at each damping's step: the "
                "closure must return the loss"
            )
        losses.append(loss.detach().reshape(()).double())
    stacked = torch.stack(losses)
    stacked = torch.where(torch.isfinite(stacked), stacked, torch.inf)
    return stacked.argmin().reshape(1).to(ys.device)
