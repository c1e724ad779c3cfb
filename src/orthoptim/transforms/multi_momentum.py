"""Several momenta, one per data cluster, combined (Discover: Tondji, Kashubin, Cisse 2021)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_positive_int
from orthoptim._types import State
from orthoptim.functional.moments import ema_
from orthoptim.transforms.base import Ctx, TransformBase

Base = Literal["sgd", "qhm", "igt"]
BASES: tuple[str, ...] = get_args(Base)
Assignment = Literal["round_robin", "given"]
ASSIGNMENTS: tuple[str, ...] = get_args(Assignment)
CLUSTER_KEY = "cluster"
"""Param-group key: the cluster (``0 .. clusters - 1``) of the batch the next ``step()`` uses,
read where ``assignment="given"`` (``recipes.plan.live_chain``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MultiMomentum(TransformBase):
    r"""One momentum buffer per data cluster; the update combines all of them.

    Each step belongs to one cluster ``k`` (its batch was drawn from that cluster). Only
    ``m_k`` takes the incoming gradient ``g``; the update reads the average of all ``K``
    buffers, ``mbar = (1/K) sum_j m_j``, so the clusters not seen this step still contribute
    their latest estimate (Discover's variance reduction: Tondji, Kashubin, Cisse 2021, arXiv
    2111.11828, after the multi-momentum strategy of Yuan et al. 2019). Per ``base``:

    - ``"sgd"`` (heavy ball, torch.optim.SGD's convention, dampening 0): ``m_k <- beta m_k + g``,
      ``u <- mbar``. With ``K = 1`` this is torch.optim.SGD(momentum=beta), bit for bit.
    - ``"qhm"`` (quasi-hyperbolic momentum, Ma & Yarats 2019): ``m_k <- beta m_k + (1-beta) g``,
      ``u <- (1 - nu) g + nu mbar``.
    - ``"igt"`` (implicit gradient transport, Arnold et al. 2019, constant ``gamma = beta``):
      ``v_k <- beta v_k + (1-beta) g`` with ``g`` taken at the extrapolated point
      ``phi_t = theta_t + a (theta_t - theta_{t-1})``, ``a = beta / (1 - beta)``, and
      ``theta_{t+1} = theta_t - lr vbar``. Written without a closure by the standard
      reformulation: the model's parameters hold ``phi`` (so the ordinary backward gives the
      gradient at the extrapolated point) and the buffer ``shift = phi - theta`` is kept, so the
      shell's ``p <- p - lr u`` moves ``phi_t`` to ``phi_{t+1}`` with
      ``u = (1 + a) vbar + shift / lr`` and then ``shift <- -a lr vbar``. The iterate itself is
      ``theta = p - shift``; evaluate the model there after training (``lr`` must be > 0).

    Which cluster a step belongs to (``assignment``): ``"round_robin"``, step ``t`` (1-based
    count of this parameter's updates) belongs to cluster ``(t - 1) mod K``, deterministic from
    the step counter so a resumed run continues the cycle; ``"given"``, the param group's
    ``"cluster"`` entry (``CLUSTER_KEY``) names it, set before each ``step()``
    (``for g in opt.param_groups: g["cluster"] = k``; torch keeps it in ``state_dict``), read
    into ``cluster`` by ``recipes.plan.live_chain``; a step without it raises ``ValueError``.

    State: ``m0 .. m{K-1}`` (and ``shift`` for ``"igt"``), each shaped like the parameter in
    its dtype: ``K`` (``K + 1``) copies of the parameter.

    Args:
        clusters: ``K``, >= 1.
        beta: momentum coefficient in [0, 1) (IGT's ``gamma``).
        base: ``"sgd"``, ``"qhm"`` or ``"igt"``.
        nu: QHM's immediate discount in [0, 1) (read with ``base="qhm"`` only).
        assignment: ``"round_robin"`` or ``"given"``.
        cluster: this step's cluster where ``assignment="given"``; set per step from the param
            group (``with_cluster``), ``None`` in a recipe.
    """

    key: ClassVar[str] = "multi_momentum"
    elementwise: ClassVar[bool] = True
    formula: ClassVar[str] = (
        r"m_k \leftarrow \beta m_k + g \text{ (sgd) or } \beta m_k + (1-\beta) g"
        r" \text{ (qhm, igt)};\; \bar m = \tfrac1K \textstyle\sum_j m_j;\;"
        r"u \leftarrow \bar m \text{ (sgd)},\ (1-\nu) g + \nu \bar m \text{ (qhm)},\ "
        r"(1 + a)\bar m + s/\eta,\ s \leftarrow -a \eta \bar m \text{ (igt)}"
    )
    clusters: int = 4
    beta: float = 0.9
    base: Base = "sgd"
    nu: float = 0.7
    assignment: Assignment = "round_robin"
    cluster: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_positive_int("clusters", self.clusters)
        check_beta("momentum", self.beta)
        check_choice("base", self.base, BASES)
        check_beta("nu", self.nu)
        check_choice("assignment", self.assignment, ASSIGNMENTS)
        if self.cluster is not None:
            if self.assignment != "given":
                raise ValueError(
                    f"the param group sets {CLUSTER_KEY!r} = {self.cluster!r}, but the clusters "
                    "are assigned round robin (assignment='round_robin'); build with "
                    "assignment='given' to name each step's cluster"
                )
            if isinstance(self.cluster, bool) or not isinstance(self.cluster, int):
                raise ValueError(
                    f"{CLUSTER_KEY!r} must be an int in [0, {self.clusters}), got {self.cluster!r}"
                )
            if not 0 <= self.cluster < self.clusters:
                raise ValueError(
                    f"{CLUSTER_KEY!r} must be in [0, {self.clusters}) (clusters={self.clusters}), "
                    f"got {self.cluster}"
                )

    def init(self, p: Tensor) -> dict[str, Tensor]:
        state = {
            f"m{k}": torch.zeros_like(p, memory_format=torch.preserve_format)
            for k in range(self.clusters)
        }
        if self.base == "igt":
            state["shift"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @property
    def moments(self) -> tuple[float, ...]:
        return (self.beta,)

    def with_moments(self, moments: tuple[float, ...]) -> MultiMomentum:
        return dataclasses.replace(self, beta=float(moments[0]))

    def with_cluster(self, cluster: int) -> MultiMomentum:
        """This transform for a step of ``cluster`` (validated as the fields)."""
        return dataclasses.replace(self, cluster=cluster)

    def step_cluster(self, c: Ctx) -> int:
        """The cluster of this step (``assignment``)."""
        if self.assignment == "round_robin":
            return (c.int_step - 1) % self.clusters
        if self.cluster is None:
            raise ValueError(
                f"assignment='given' needs each step's cluster: set group[{CLUSTER_KEY!r}] = k "
                f"(0 <= k < {self.clusters}) in every param group of this optimizer before "
                "step() (for g in opt.param_groups: g['cluster'] = k)"
            )
        return self.cluster

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        k = self.step_cluster(c)
        m = s[f"m{k}"]
        g = u if u.dtype == m.dtype else u.to(m.dtype)
        if self.base == "sgd":
            m.mul_(self.beta).add_(g)
        else:
            ema_(m, g, self.beta)
        if self.base == "sgd":  # the average straight into the working copy: K + 1 passes
            return self._mean_into(s, u)
        mean = self._mean_into(s, torch.empty_like(m))
        if self.base == "qhm":
            out = torch.lerp(g, mean, self.nu)
        else:
            lr = float(c.lr)
            if lr <= 0.0:
                raise ValueError(
                    "base='igt' keeps the extrapolated point in the parameters and moves it by "
                    f"lr * u, which needs lr > 0 (got lr={lr})"
                )
            a = self.beta / (1.0 - self.beta)
            shift = s["shift"]
            out = torch.add(shift, mean, alpha=(1.0 + a) * lr).div_(lr)
            shift.copy_(mean).mul_(-a * lr)
        return u.copy_(out)

    def _mean_into(self, s: State, out: Tensor) -> Tensor:
        """``out <- (1/K) sum_j m_j``, summed in cluster order (a copy of ``m0`` for ``K = 1``:
        torch's SGD step, bit for bit)."""
        if self.clusters == 1:
            return out.copy_(s["m0"])
        torch.add(s["m0"], s["m1"], out=out)
        for k in range(2, self.clusters):
            out.add_(s[f"m{k}"])
        return out.div_(self.clusters)

    def cost(self, shape: tuple[int, ...]) -> float:
        n = 1.0
        for d in shape:
            n *= d
        return (self.clusters + 3.0) * n
