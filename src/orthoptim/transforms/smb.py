"""SMB's gradient estimator: the SGD trial, the Armijo test on the same minibatch, and the model
step of each block where the trial fails (``functional.smb``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import (
    check_bool,
    check_choice,
    check_finite_nonnegative,
    check_positive,
    check_positive_int,
)
from orthoptim.functional.moments import stats_dtype
from orthoptim.functional.smb import armijo_accepts, sgd_model_coefficients
from orthoptim.transforms.estimator import (
    EstimatorGroup,
    GradientEstimator,
    LossOracle,
    regroup,
)

_NEEDS_LOSS = (
    "smb tests its trial step against the closure's loss: the closure must return the loss "
    "(after zeroing the gradients and calling loss.backward())"
)

ModelBlocks = Literal["tensor", "group"]
MODEL_BLOCKS: tuple[str, ...] = get_args(ModelBlocks)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelBuilding(GradientEstimator):
    r"""SMB (Birbil, Martin, Onay, Öztoprak, arXiv 2111.07058): the gradient an SGD route turns
    into SMB's step.

    Per step, on the closure's minibatch: ``g`` at ``x``; the trial ``x + s``, ``s_p = -t_p g_p``
    (``t_p`` the parameter's group lr, times the schedule's factor with ``autoschedule``); its
    loss and gradient ``g_t`` (``oracle.gradients_at``, one forward and one backward); the trial
    is kept where ``f(x + s) <= f(x) - c sum_p t_p |g_p|^2`` or ``|g| < 1e-8``
    (``functional.smb.armijo_accepts``), else each block takes the model step
    ``d = -t (alpha g + beta y)``, ``y = g_t - g`` (``functional.smb.sgd_model_coefficients``,
    from the block's ``|g|`` and ``|y|``).

    Returned gradient: ``d / -t``, that is ``g`` where the trial is kept and
    ``alpha g + beta y`` where it is not (times the schedule's factor), so that the SGD route
    (``theta <- theta - lr u``) lands exactly on SMB's point. Returning a gradient rather than
    applying the step keeps SMB a ``GradientEstimator`` like the other closure methods: the shell
    writes it to ``p.grad`` and the plan's routes run as usual (weight decay, a momentum or
    another base chain then act on the SMB direction; the paper's method is the plain SGD route,
    ``recipes.smb``). The test is decided on the device (``torch.where`` per element),
    so the trial's gradient is always computed: 2 forward and 2 backward passes per step where
    the reference skips the second backward for a kept trial.

    Blocks (``model_blocks``): ``"tensor"`` (the reference: each parameter tensor builds its own
    model, ``SMB.step_smb`` flattens each ``p``; the paper's "layers of tensors") or
    ``"group"`` (one model over the concatenated tensors of each optimizer param group: with
    ``build("smb", model)`` the groups are the roles, hidden matrices, head, embeddings and
    vectors; pass param groups of your own, one per layer, for a weight and its bias together).
    The Armijo test is one over all parameters either way.

    Step-size schedule (``autoschedule``, off by default as in the paper's experiments): every
    ``n_batches_per_epoch`` steps, where more than a ``gamma`` fraction of them took a model step
    the factor is multiplied by ``beta``, else divided by ``beta`` while the lr stays at most
    ``lr_max``. The factor and the count of model steps are per-parameter scalars in the state
    (``estimator.lr_factor`` in the parameter's statistics dtype, ``estimator.model_steps``
    int64: 12 bytes per tensor in float32), decided on the device and kept in the checkpoint (a
    refused or skipped step commits neither). Without ``autoschedule`` the estimator holds no
    state.

    Args:
        c: the Armijo constant, > 0 (reference 0.1).
        eta: the model's regularisation ``eta`` in (0, 1] (reference 0.99): its Hessian's
            smallest eigenvalue is ``|g| / (eta |s|)``.
        model_blocks: ``"tensor"`` or ``"group"``.
        autoschedule: the step-size schedule above.
        n_batches_per_epoch, gamma, beta, lr_max: its period (steps), threshold fraction of model
            steps, factor and largest lr (reference 500, 0.05, 0.9, 20).
    """

    c: float = 0.1
    eta: float = 0.99
    model_blocks: ModelBlocks = "tensor"
    autoschedule: bool = False
    n_batches_per_epoch: int = 500
    gamma: float = 0.05
    beta: float = 0.9
    lr_max: float = 20.0

    needs_graph: ClassVar[bool] = False
    closure_backward: ClassVar[bool] = True

    @property
    def passes(self) -> str:
        return "2 forward, 2 backward"

    def __post_init__(self) -> None:
        check_positive("c", self.c)
        check_positive("eta", self.eta)
        if self.eta > 1.0:  # the model's regulariser shrinks the trial, never grows it
            raise ValueError(f"eta must be in (0, 1], got {self.eta!r}")
        check_choice("model_blocks", self.model_blocks, MODEL_BLOCKS)
        check_bool("autoschedule", self.autoschedule)
        check_positive_int("n_batches_per_epoch", self.n_batches_per_epoch)
        check_fraction("gamma", self.gamma)
        check_positive("beta", self.beta)
        if self.beta >= 1.0:
            raise ValueError(f"beta must be in (0, 1), got {self.beta!r}")
        check_positive("lr_max", self.lr_max)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        if not self.autoschedule:
            return {}
        return {
            "lr_factor": torch.ones((), dtype=stats_dtype(p), device=p.device),
            "model_steps": torch.zeros((), dtype=torch.int64, device=p.device),
        }

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        loss = oracle.loss
        if loss is None:
            raise ValueError(_NEEDS_LOSS)
        params: list[Tensor] = []
        grads: list[Tensor] = []
        lrs: list[float] = []
        factors: list[Tensor] = []
        sizes: list[int] = []
        group_lrs: list[float] = []
        for group in groups:
            sizes.append(len(group.params))
            group_lrs.append(float(group.lr))
            for p, g, state in zip(group.params, group.grads, group.states, strict=True):
                params.append(p)
                grads.append(torch.zeros_like(p) if g is None else g)
                lrs.append(float(group.lr))
                if self.autoschedule:
                    factors.append(state["lr_factor"])
        if not params:
            return [[] for _ in groups]
        dtype = _scalar_dtype(grads)
        g_norms = _norms(grads, dtype)
        scale = torch.stack(factors).to(dtype) if self.autoschedule else None
        # the decrease the Armijo test asks for: -g.s = sum_p t_p |g_p|^2 (no lr tensor is
        # built from the host's numbers: a python lr times a device sum per group)
        weighted = g_norms.square() if scale is None else g_norms.square() * scale
        decrease = sum(
            (lr * part.sum() for lr, part in zip(group_lrs, weighted.split(sizes), strict=True)),
            start=torch.zeros((), dtype=dtype, device=g_norms.device),
        )
        factor = [None] * len(params) if scale is None else scale.unbind()
        points = {
            p: torch.add(p.detach(), g, alpha=-lr) if f is None else p.detach() - (lr * f) * g
            for p, g, lr, f in zip(params, grads, lrs, factor, strict=True)
        }
        trial_loss, trial_grads = oracle.gradients_at(points, params)
        del points
        if trial_loss is None:
            raise ValueError(_NEEDS_LOSS)
        accept = armijo_accepts(
            loss.to(dtype), trial_loss.detach().to(dtype), decrease, g_norms.norm(), self.c
        )
        torch._foreach_sub_(trial_grads, grads)  # the oracle's copies: y in place
        ys = trial_grads
        y_norms = _norms(ys, dtype)
        if self.model_blocks == "group":
            g_norms = _group_norms(g_norms, sizes)
            y_norms = _group_norms(y_norms, sizes)
        alpha, beta = sgd_model_coefficients(g_norms, y_norms, self.eta)
        if scale is not None:
            self._schedule(groups, accept, step)
        # A kept trial returns g itself, whatever the trial's gradient holds (the reference
        # never computes it then), so the select is per element, not by zeroed coefficients.
        out = []
        for g, y, a, b, f in zip(grads, ys, alpha.unbind(), beta.unbind(), factor, strict=True):
            model = y.mul_(b.to(y.dtype)).addcmul_(g, a.to(g.dtype))
            chosen = torch.where(accept, g, model)
            out.append(chosen if f is None else chosen.mul_(f.to(g.dtype)))
        return regroup(groups, out)

    def _schedule(self, groups: Sequence[EstimatorGroup], accept: Tensor, step: int) -> None:
        """Count this step's model step and, at the end of a period of ``n_batches_per_epoch``
        steps, move each parameter's lr factor (the reference's ``autoschedule``). These are
        the oracle's copies of the buffers: the shell commits them only once the step is
        applied, so a refused or skipped step leaves the schedule as it was."""
        model = (~accept).to(torch.int64)
        end = step % self.n_batches_per_epoch == 0
        for group in groups:
            for state in group.states:
                count = state["model_steps"].add_(model)
                if not end:
                    continue
                factor = state["lr_factor"]
                shrink = count / self.n_batches_per_epoch > self.gamma
                grow = factor * float(group.lr) / self.beta <= self.lr_max
                factor.copy_(
                    torch.where(
                        shrink, factor * self.beta, torch.where(grow, factor / self.beta, factor)
                    )
                )
                count.zero_()

    def explain(self) -> str:
        line = (
            f"SMB model building (c={self.c}, eta={self.eta}, model_blocks={self.model_blocks}): "
            "the SGD trial, kept if the Armijo test passes on the same minibatch, else each "
            f"block's model step; {self.passes} per step"
        )
        if self.autoschedule:
            line += (
                f"; lr factor every {self.n_batches_per_epoch} steps: x{self.beta} where more "
                f"than {self.gamma} of them took a model step, else /{self.beta} up to lr "
                f"{self.lr_max}"
            )
        return line


def check_fraction(name: str, value: float) -> None:
    check_finite_nonnegative(name, value)
    if value > 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _scalar_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    dtype = stats_dtype(tensors[0])
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, stats_dtype(t))
    return dtype


def _norms(tensors: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """The tensors' 2-norms, stacked, in ``dtype`` (float32 at least for 16-bit tensors)."""
    norms: Sequence[Tensor]
    if all(t.dtype == tensors[0].dtype for t in tensors):
        norms = torch._foreach_norm(list(tensors), 2, dtype=stats_dtype(tensors[0]))
    else:
        norms = [torch.linalg.vector_norm(t, dtype=stats_dtype(t)) for t in tensors]
    return torch.stack([n.to(dtype) for n in norms])


def _group_norms(norms: Tensor, sizes: Sequence[int]) -> Tensor:
    """Each tensor's entry replaced by the norm of its group's concatenated tensors."""
    return torch.cat(
        [part.square().sum().sqrt().expand(len(part)) for part in norms.split(list(sizes))]
    )
