"""Gradient estimators: what gradient a plan's routes see, from more than one evaluation of the
step's closure (SAM's perturbed point, GAM, finite-difference gradient regularisation, SMB's
trial point, saddle-free Newton's Krylov subspace, DeepZero's zeroth-order estimate).

A ``GradientEstimator`` sits in front of a whole plan (``recipes.plan.estimated``), not in a
route's chain: one estimate covers every parameter of the optimizer at once (SAM's radius is a
norm over the whole model), whatever route then updates it. The shell
(``orthoptim.oracle``) runs the closure, hands the estimator a ``LossOracle`` that re-evaluates
it at other parameter values, writes the estimate to each parameter's ``.grad``, and then steps
the routes as for any gradient. So the base optimizer is any chain or plan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from torch import Tensor


class LossOracle(Protocol):
    """The step's closure, re-evaluable at other parameter values; built by the shell once
    per step (``orthoptim.oracle.ClosureOracle``). Every evaluation restores the parameters
    and their ``.grad`` after, also on error; none changes the optimizer's state."""

    @property
    def loss(self) -> Tensor | None:
        """The closure's loss at the current parameters (detached), ``None`` where the closure
        returned none."""
        ...

    @property
    def evaluations(self) -> int:
        """Closure calls so far in this step, the shell's own first one included."""
        ...

    def gradients_at(
        self, points: Mapping[Tensor, Tensor], wanted: Sequence[Tensor]
    ) -> tuple[Tensor | None, list[Tensor]]:
        """The loss and the gradients of ``wanted`` (zeros where the closure left none) with
        each parameter ``p`` of ``points`` set to ``points[p]`` and every other parameter at
        its current value."""
        ...

    def loss_at(self, points: Mapping[Tensor, Tensor]) -> Tensor:
        """The loss with the parameters of ``points`` moved there, the closure run under
        ``torch.no_grad()`` (for closures that call no backward: zeroth-order estimators)."""
        ...

    def hessian_vector_products(self, vectors: Mapping[Tensor, Tensor]) -> dict[Tensor, Tensor]:
        """``{p: sum_q H_pq v_q}`` at the current parameters for the parameters of
        ``vectors``, from the graph the closure's ``loss.backward(create_graph=True)`` left
        (kept until the step ends, so several calls share it)."""
        ...


@dataclass(frozen=True)
class EstimatorGroup:
    """One param group as an estimator sees it: its trainable parameters, their gradients at
    the current point (``None`` where the closure left none), each parameter's estimator
    buffers (the keys ``init`` returned) and the group's lr."""

    params: Sequence[Tensor]
    grads: Sequence[Tensor | None]
    states: Sequence[dict[str, Tensor]]
    lr: float


def regroup(groups: Sequence[EstimatorGroup], flat: Sequence[Tensor]) -> list[list[Tensor]]:
    """``flat`` (one tensor per parameter, in ``groups``' order) split back per group: the shape
    ``GradientEstimator.estimate`` returns."""
    out, start = [], 0
    for group in groups:
        out.append(list(flat[start : start + len(group.params)]))
        start += len(group.params)
    return out


@dataclass(frozen=True)
class GradientEstimator(ABC):
    """Base class of the plan-level gradient estimators.

    Class flags:
        needs_graph: the closure must call ``loss.backward(create_graph=True)``
            (``LossOracle.hessian_vector_products``); checked before anything changes.
        closure_backward: whether the closure computes gradients. ``False``: it returns the
            loss and calls no backward (DeepZero); the estimate is every trainable parameter's.
    """

    needs_graph: ClassVar[bool] = False
    closure_backward: ClassVar[bool] = True
    key: ClassVar[str] = "estimator"

    def init(self, p: Tensor) -> dict[str, Tensor]:
        """The parameter's buffers, kept in the optimizer state as ``"estimator.<key>"`` (saved
        and resumed like a chain's)."""
        return {}

    @abstractmethod
    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        """The gradient each parameter's route should see at this ``step`` (1-based count of
        the optimizer's steps), per group in ``groups``' order."""

    @property
    def passes(self) -> str:
        """Forward and backward passes of the model per step, for ``explain`` and the docs."""
        return "1 forward, 1 backward"

    def explain(self) -> str:
        """One line on the estimate, for ``Plan.explain``."""
        return f"{type(self).__name__}: {self.passes} per step"
