"""DeepZero's zeroth-order gradient estimator: sparse coordinate-wise finite differences of the
loss, with the sparsity pattern from ZO-GraSP (``functional.deepzero``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_positive, check_positive_int
from orthoptim.functional.deepzero import (
    coordinate_estimate,
    keep_largest,
    kept_indices,
    random_mask,
    shuffled,
    zo_grasp_scores,
)
from orthoptim.transforms.estimator import (
    EstimatorGroup,
    GradientEstimator,
    LossOracle,
    regroup,
)

Pruning = Literal["zo_grasp", "random"]
PRUNINGS: tuple[Pruning, ...] = ("zo_grasp", "random")
FiniteStep = Literal["realized", "nominal"]
FINITE_STEPS: tuple[FiniteStep, ...] = ("realized", "nominal")

# Streams of the per-step generators, so the mask's draws and the coordinate subset's differ.
_MASK, _SUBSET = 0, 1


def step_generator(seed: int, step: int, stream: int, device: torch.device) -> torch.Generator:
    """The generator of ``stream`` at ``step``: a function of the seed and the step alone, so a
    resumed run draws what the straight run drew."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 2 + stream)


@dataclass(frozen=True, kw_only=True)
class DeepZeroEstimate(GradientEstimator):
    r"""DeepZero's sparse coordinate-wise gradient estimate (Chen et al., ICLR 2024, arXiv
    2310.02025; OPTML-Group/DeepZero@5cf30b1).

    Each step the gradient of coordinate ``i`` of a parameter is
    ``(f(w + mu e_i) - f(w)) / mu`` for the coordinates its mask keeps, and 0 for the others
    (``functional.deepzero.coordinate_estimate``); ``f(w)`` is the closure's own first call.
    The closure returns the loss and calls no backward; every evaluation runs under
    ``torch.no_grad()``.

    The mask (buffer ``mask``, boolean: 1 byte per parameter) is full at ``init`` and set at the
    first step: matrices and other tensors of 2 or more dimensions (the reference's conv and
    linear weights) keep a share ``1 - sparsity`` of their entries, vectors (biases, norm gains)
    keep every entry. ``pruning="zo_grasp"``: the share of each tensor comes from ZO-GraSP's
    global magnitude pruning of the scores ``-w * Hg`` (``functional.deepzero.zo_grasp_scores``,
    ``grasp_samples`` random directions per gradient estimate, on the first step's batch), and
    the kept entries are placed at random within the tensor at that share, as the reference's
    training (``layer_wise_random`` from the ZO-GraSP ratios); ``"random"``: the share is
    ``1 - sparsity`` in every tensor. ``mask_every=N`` places each tensor's kept entries anew
    every N steps (same count per tensor); ``None`` keeps the first step's mask.

    ``coordinates_per_step=q`` estimates only ``q`` of the kept coordinates per step (chosen
    uniformly over the whole model, the rest 0, no rescaling); ``None``: all of them.

    ``finite_step="realized"`` divides each difference by the step the parameter's dtype
    realises, ``fl(w_i + mu) - w_i`` (one ulp where ``w_i + mu`` rounds back to ``w_i``, as in
    bfloat16 from ``|w_i| >= 2``), not by ``mu`` (``"nominal"``, the reference's): in float32
    the two differ by ``ulp(w_i) / mu`` relatively (``1e-5`` at ``|w_i| ~ 1``; their final
    losses on ``tests/recipes/test_deepzero.py``'s problem agree within 0.1%); in bfloat16 the
    nominal division returns 0 wherever the move rounds away, silently.

    Random draws come from generators seeded by ``seed`` and the step (``step_generator``), so a
    resumed run is bit-exact.

    Forward passes per step: ``1 + K`` with ``K`` the kept (or sampled) coordinates, and
    ``2 grasp_samples + 1`` more at the first step for ZO-GraSP. One device read per parameter
    per step (the count of its kept coordinates, which sets how many evaluations run).
    """

    closure_backward: ClassVar[bool] = False
    key: ClassVar[str] = "deepzero"

    mu: float = 5e-3
    sparsity: float = 0.9
    pruning: Pruning = "zo_grasp"
    coordinates_per_step: int | None = None
    grasp_samples: int = 192
    mask_every: int | None = None
    seed: int = 0
    finite_step: FiniteStep = "realized"

    def __post_init__(self) -> None:
        check_positive("mu", self.mu)
        check_beta("sparsity", self.sparsity)
        check_choice("pruning", self.pruning, PRUNINGS)
        check_choice("finite_step", self.finite_step, FINITE_STEPS)
        if self.coordinates_per_step is not None:
            check_positive_int("coordinates_per_step", self.coordinates_per_step)
        check_positive_int("grasp_samples", self.grasp_samples)
        if self.mask_every is not None:
            check_positive_int("mask_every", self.mask_every)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    def init(self, p: Tensor) -> dict[str, Tensor]:
        return {"mask": torch.ones_like(p, dtype=torch.bool)}

    @property
    def passes(self) -> str:
        first = (
            f"; {2 * self.grasp_samples + 1} more forward at the first step (ZO-GraSP)"
            if self.sparsity > 0 and self.pruning == "zo_grasp"
            else ""
        )
        return f"1 + K forward (K: the coordinates estimated), no backward{first}"

    def explain(self) -> str:
        kept = (
            "every coordinate"
            if self.sparsity == 0
            else f"{1 - self.sparsity:g} of each matrix by {self.pruning} shares"
        )
        which = "" if self.coordinates_per_step is None else f", {self.coordinates_per_step} a step"
        return f"DeepZero CGE (mu {self.mu:g}, {kept}{which}): {self.passes}"

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        params = [p for g in groups for p in g.params]
        states = [s for g in groups for s in g.states]
        if not params:
            return [[] for _ in groups]
        base = oracle.loss
        if base is None:
            raise ValueError("deepzero: the closure must return the loss as a tensor")
        if step == 1 and self.sparsity > 0:
            self._prune(oracle, params, states, base)
        elif self.mask_every is not None and step > 1 and (step - 1) % self.mask_every == 0:
            draws = step_generator(self.seed, step, _MASK, params[0].device)
            for p, s in zip(params, states, strict=True):
                if p.ndim >= 2:
                    s["mask"].copy_(shuffled(s["mask"], draws))
        indices = [kept_indices(s["mask"]) for s in states]
        if self.coordinates_per_step is not None:
            indices = self._subset(indices, [p.numel() for p in params], step, params[0].device)
        realized = self.finite_step == "realized"
        estimates = [
            coordinate_estimate(_at(oracle, p), p.detach(), idx, self.mu, base, realized)
            for p, idx in zip(params, indices, strict=True)
        ]
        return regroup(groups, estimates)

    def _prune(
        self,
        oracle: LossOracle,
        params: Sequence[Tensor],
        states: Sequence[dict[str, Tensor]],
        base: Tensor,
    ) -> None:
        """The first step's masks (class docstring)."""
        pruned = [i for i, p in enumerate(params) if p.ndim >= 2]
        if not pruned:
            return
        g = step_generator(self.seed, 1, _MASK, params[0].device)
        weights = [params[i].detach() for i in pruned]
        if self.pruning == "zo_grasp":
            moved = [params[i] for i in pruned]

            def f(xs: Sequence[Tensor]) -> Tensor:
                return oracle.loss_at(dict(zip(moved, xs, strict=True)))

            scores = zo_grasp_scores(f, weights, self.grasp_samples, self.mu, g, base)
            masks = [shuffled(m, g) for m in keep_largest(scores, self.sparsity)]
        else:
            masks = [random_mask(tuple(w.shape), self.sparsity, g, w.device) for w in weights]
        for i, m in zip(pruned, masks, strict=True):
            states[i]["mask"].copy_(m)

    def _subset(
        self, indices: list[Tensor], numels: list[int], step: int, device: torch.device
    ) -> list[Tensor]:
        """``coordinates_per_step`` of the kept coordinates of all parameters together, chosen
        uniformly at this step; per parameter, ascending."""
        offsets = [0]
        for n in numels[:-1]:
            offsets.append(offsets[-1] + n)
        every = torch.cat([idx + o for idx, o in zip(indices, offsets, strict=True)])
        g = step_generator(self.seed, step, _SUBSET, device)
        count = min(self.coordinates_per_step or every.numel(), every.numel())
        chosen = every[torch.randperm(every.numel(), generator=g, device=device)[:count]]
        chosen = chosen.sort().values
        return [
            chosen[(chosen >= o) & (chosen < o + n)] - o
            for o, n in zip(offsets, numels, strict=True)
        ]


def _at(oracle: LossOracle, p: Tensor) -> Callable[[Tensor], Tensor]:
    """The loss as a function of ``p`` alone."""

    def f(x: Tensor) -> Tensor:
        return oracle.loss_at({p: x})

    return f
