"""OASIS: a Hutchinson diagonal preconditioner and a step size from a local Lipschitz estimate
(``functional.oasis``; the recipe is ``recipes.oasis.oasis``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_positive, check_positive_int
from orthoptim._types import State
from orthoptim.functional.moments import stats_dtype
from orthoptim.functional.oasis import lipschitz_step, rademacher, truncated
from orthoptim.transforms.base import Ctx, TransformBase

StepSize = Literal["adaptive", "fixed"]
STEP_SIZES: tuple[str, ...] = get_args(StepSize)
StepBlocks = Literal["model", "parameter"]
STEP_BLOCKS: tuple[str, ...] = get_args(StepBlocks)
GradientDifference = Literal["same_batch", "previous_step"]
GRADIENT_DIFFERENCES: tuple[str, ...] = get_args(GradientDifference)


@dataclass(frozen=True, slots=True, kw_only=True)
class Oasis(TransformBase):
    r"""``u <- eta_k D^_k^{-1} g``: OASIS (Jahani, Rusakov, Shi, Richtárik, Mahoney, Takáč,
    "Doubly Adaptive Scaled Algorithm for Machine Learning Using Second-Order Information",
    ICLR 2022, arXiv 2109.05198), Algorithm 1.

    Per step, with ``z_k`` the step's Rademacher probe and ``H_k z_k`` its Hessian-vector
    product (``Ctx.hvp``, which ``ChainOptimizer.step(closure)`` evaluates: ``orthoptim.hvp``,
    one double backward per step, the closure calling ``loss.backward(create_graph=True)``):

    - warm start (steps ``1 .. warmup``, at the initial point ``w_0``): ``D_0`` is the mean of
      the ``warmup`` samples ``z ⊙ H z`` (each step's batch its own); the parameters stay put
      until the last of them, which takes Algorithm 1's first step
      ``w_1 = w_0 - eta_0 D^_0^{-1} g_0``;
    - then (``k = step - warmup >= 1``): ``D_k = beta2 D_{k-1} + (1 - beta2) z_k ⊙ H_k z_k``
      (eq. 6), ``D^_k = max(|D_k|, alpha)`` (eq. 7);
      ``eta_k = min(sqrt(1 + theta_{k-1}) eta_{k-1}, ||w_k - w_{k-1}||_{D^_k} /
      (2 ||g_k - g_{k-1}||*_{D^_k}))`` with ``||x||_D = sqrt(x^T D x)``,
      ``||x||*_D = sqrt(x^T D^{-1} x)``, ``theta_0 = +inf``, ``theta_k = eta_k / eta_{k-1}``
      (``functional.oasis.lipschitz_step``, its guards there); ``u = eta_k D^_k^{-1} g_k``.

    The step size is shared by the parameters of a block (``blocks``): ``"model"``, the
    paper's, one ``eta`` for every parameter of the route, the norms summed over all of them
    (``route_wide``: the shell hands the route's groups over together, and the route needs a
    gradient for every parameter at every step: ``ValueError`` naming their step counts where
    they differ); ``"parameter"``, one ``eta`` per parameter tensor (its own norms), which runs
    anywhere a per-parameter transform does. ``step_size="fixed"``: ``eta_k = 1`` (the
    paper's fixed-learning-rate OASIS; the lr is then the step size to tune), no Lipschitz
    estimate and none of its buffers.

    The optimizer's lr multiplies the update (``theta <- theta - lr u``); at the default 1 the
    step is the paper's. Any other lr scales every ``w_k - w_{k-1}`` and thus (on a quadratic
    exactly) every later step by the same factor: the Lipschitz estimate is of the local
    curvature, not of the step taken.

    The gradient difference (``gradient_difference``): ``"same_batch"`` (default),
    ``g_k - g_{k-1} = grad F_{I_k}(w_k) - grad F_{I_k}(w_{k-1})`` on the step's batch ``I_k``,
    the second gradient evaluated by ``ChainOptimizer.step(closure)`` at the previous
    parameters (``previous_point``, ``Ctx.grad_at_previous``: one more forward and backward per
    step, also on the warm start's steps 2 .. ``warmup``, where it is not read);
    ``"previous_step"``, the previous step's gradient ``grad F_{I_{k-1}}(w_{k-1})`` (one
    gradient evaluation per step; exact on a full batch, Algorithm 1 as written). With
    minibatches the latter's difference is dominated by the two batches' noise, which does
    not shrink with the step, so ``eta_k ~ ||w_k - w_{k-1}|| / noise`` decays geometrically
    (measured on the arena's digits task: ``eta`` from 1e-3 to 1e-12 in 40 steps):
    ``"same_batch"`` keeps the difference a curvature estimate. It reads the parameters in
    their stored layout (the shell sets them to ``prev_param``): a transposed or stacked
    weight (``layouts``) is refused with it (``ValueError`` at the first step).

    State: ``diag`` (``D``), ``prev_param`` (``w_{k-1}``, adaptive only), ``prev_grad``
    (``g_{k-1}``, ``"previous_step"`` only), ``eta`` and ``theta`` (0-d; with
    ``blocks="model"`` every parameter holds the same values; ``theta_0 = +inf`` is not
    stored), in ``stats_dtype``: 8 bytes per
    float32 element at the defaults, 12 with ``"previous_step"``, 4 with ``"fixed"``.

    Args:
        beta2: EMA coefficient of ``D``, in [0, 1).
        alpha: truncation ``alpha`` > 0 of ``|D|``.
        warmup: number of Hutchinson samples at ``w_0`` averaged into ``D_0`` (one per step),
            >= 1.
        eta0: the first step's ``eta_0`` > 0 (Algorithm 1's input; later steps adapt it).
        step_size: ``"adaptive"`` (Algorithm 1) or ``"fixed"`` (above).
        blocks: ``"model"`` or ``"parameter"`` (above); ignored with ``step_size="fixed"``.
        gradient_difference: ``"same_batch"`` or ``"previous_step"`` (above); ignored with
            ``step_size="fixed"``.
        seed: seeds the probes: ``(seed, step, parameter index)``, so a resumed run draws the
            same ones and two parameters independent ones.
    """

    key: ClassVar[str] = "oasis"
    formula: ClassVar[str] = (
        r"D_k = \beta_2 D_{k-1} + (1-\beta_2)\, z_k \odot H_k z_k;\;"
        r"\hat D_k = \max(|D_k|, \alpha);\;"
        r"\eta_k = \min\!\big(\sqrt{1+\theta_{k-1}}\,\eta_{k-1},\,"
        r"\tfrac{\|w_k - w_{k-1}\|_{\hat D_k}}{2\|g_k - g_{k-1}\|^*_{\hat D_k}}\big);\;"
        r"u \leftarrow \eta_k \hat D_k^{-1} g_k"
    )
    beta2: float = 0.99
    alpha: float = 1e-2
    warmup: int = 5
    eta0: float = 1e-3
    step_size: StepSize = "adaptive"
    blocks: StepBlocks = "model"
    gradient_difference: GradientDifference = "same_batch"
    seed: int = 0

    def __post_init__(self) -> None:
        check_beta("beta2", self.beta2)
        check_positive("alpha", self.alpha)
        check_positive_int("warmup", self.warmup)
        check_positive("eta0", self.eta0)
        check_choice("step_size", self.step_size, STEP_SIZES)
        check_choice("blocks", self.blocks, STEP_BLOCKS)
        check_choice("gradient_difference", self.gradient_difference, GRADIENT_DIFFERENCES)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def adaptive(self) -> bool:
        return self.step_size == "adaptive"

    @property
    def same_batch(self) -> bool:
        return self.adaptive and self.gradient_difference == "same_batch"

    @property
    def needs_hvp(self) -> bool:
        return True

    @property
    def previous_point(self) -> str | None:
        return "prev_param" if self.same_batch else None

    def hvp_probe(self, p: Tensor, step: int, index: int = 0) -> Tensor | None:
        """The Rademacher probe of parameter ``index`` at ``step``, every step
        (``functional.oasis.rademacher``)."""
        return rademacher(tuple(p.shape), self.seed, step, index, p.dtype, p.device)

    @property
    def route_wide(self) -> bool:
        return self.adaptive and self.blocks == "model"

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = stats_dtype(p)
        state = {"diag": torch.zeros(p.shape, dtype=dtype, device=p.device)}
        if self.adaptive:
            # w_0 itself: the shell's evaluations at the previous point during the warm start
            # (same_batch) are then at the parameters' own value, where nothing moved yet.
            state["prev_param"] = p.detach().to(dtype, copy=True)
            if not self.same_batch:
                state["prev_grad"] = torch.zeros(p.shape, dtype=dtype, device=p.device)
            state["eta"] = torch.full((), self.eta0, dtype=dtype, device=p.device)
            # theta_0 = +inf is known from the step (``_step_block``): the state stays finite
            state["theta"] = torch.zeros((), dtype=dtype, device=p.device)
        return state

    def cost(self, shape: tuple[int, ...]) -> float:
        # the sample, the EMA, the truncation and the scaling; adaptive: the two norms.
        return float((16 if self.adaptive else 8) * math.prod(shape))

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self.apply_many([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        """Each parameter's ``D^`` apart; the step size per block: over all of ``us`` with
        ``blocks="model"`` (the shell passes the whole route), else per parameter."""
        if not us:
            return us
        steps = {c.int_step for c in cs}
        if self.route_wide and len(steps) > 1:
            counts = {c.name or f"#{i}": c.int_step for i, c in enumerate(cs)}
            raise ValueError(
                "oasis blocks='model' shares one step size over every parameter of the route "
                f"and needs a gradient for each of them at every step; their step counts "
                f"differ: {counts}. Give every parameter a gradient (zero for an unused one), "
                "or use blocks='parameter'"
            )
        if self.same_batch and any(c.stored is not None for c in cs):
            name = next(c.name for c in cs if c.stored is not None) or "<unnamed>"
            raise ValueError(
                f"oasis gradient_difference='same_batch' evaluates the gradient at the previous "
                f"parameters in their stored layout, and parameter {name} is stored transposed "
                "or stacked (layouts): use gradient_difference='previous_step' for it"
            )
        scaled = [self._scaled(u, s, c) for u, s, c in zip(us, ss, cs, strict=True)]
        if not self.adaptive:
            before = cs[0].int_step < self.warmup  # the warm start stays at w_0
            return [
                u.zero_() if before else u.copy_(x) for u, (x, _) in zip(us, scaled, strict=True)
            ]
        blocks = [list(range(len(us)))] if self.blocks == "model" else [[i] for i in range(len(us))]
        for block in blocks:
            self._step_block(
                [us[i] for i in block],
                [ss[i] for i in block],
                [cs[i] for i in block],
                [scaled[i] for i in block],
            )
        return us

    def _scaled(self, u: Tensor, s: State, c: Ctx) -> tuple[Tensor, Tensor]:
        """``(D^_k^{-1} g, D^_k)`` after folding this step's sample into ``D``: the running
        mean over the warm start, the EMA after it."""
        if c.hvp is None:
            raise ValueError(
                "oasis reads a Hessian-vector product at every step and got none: step it with "
                "ChainOptimizer.step(closure), the closure calling "
                "loss.backward(create_graph=True)"
            )
        diag = s["diag"]
        z, hz = (x.to(diag.dtype) for x in c.hvp)
        sample = z.mul_(hz) if z is not c.hvp[0] else z * hz
        step = c.int_step
        if step <= self.warmup:
            diag.add_(sample.sub_(diag), alpha=1.0 / step)
        else:
            diag.lerp_(sample, 1.0 - self.beta2)
        d_hat = truncated(diag, self.alpha)
        return u.to(diag.dtype) / d_hat, d_hat

    def _step_block(
        self,
        us: list[Tensor],
        ss: list[State],
        cs: list[Ctx],
        scaled: list[tuple[Tensor, Tensor]],
    ) -> None:
        """The block's step size, each ``u`` set to ``eta_k D^_k^{-1} g_k``, and the block's
        ``w_{k-1}``, ``g_{k-1}``, ``eta``, ``theta`` moved on. Before the warm start ends the
        update is zero; at its end, ``eta_0``."""
        step = cs[0].int_step
        eta, theta = ss[0]["eta"], ss[0]["theta"]
        if step == self.warmup + 1:  # k = 1: theta_0 = +inf
            theta = torch.full_like(theta, math.inf)
        if step > self.warmup:
            device = eta.device
            dw = torch.stack(
                [
                    (d_hat * (c.param.to(d_hat.dtype) - s["prev_param"]).square()).sum().to(device)
                    for (_, d_hat), s, c in zip(scaled, ss, cs, strict=True)
                ]
            ).sum()
            dg = torch.stack(
                [
                    ((c.grad.to(d_hat.dtype) - self._previous_grad(s, c)).square() / d_hat)
                    .sum()
                    .to(device)
                    for (_, d_hat), s, c in zip(scaled, ss, cs, strict=True)
                ]
            ).sum()
            eta, theta = lipschitz_step(eta, theta, dw, dg)
        for u, s, c, (x, _) in zip(us, ss, cs, scaled, strict=True):
            if step < self.warmup:
                u.zero_()
                continue
            s["prev_param"].copy_(c.param)
            if not self.same_batch:
                s["prev_grad"].copy_(c.grad)
            s["eta"].copy_(eta)
            s["theta"].copy_(theta)
            u.copy_(x.mul_(eta.to(x.device)))

    def _previous_grad(self, s: State, c: Ctx) -> Tensor:
        """``g_{k-1}``: the gradient at ``w_{k-1}`` on this step's batch (``"same_batch"``, the
        shell's ``Ctx.grad_at_previous``) or the previous step's (``"previous_step"``)."""
        if not self.same_batch:
            return s["prev_grad"]
        if c.grad_at_previous is None:
            raise ValueError(
                "oasis gradient_difference='same_batch' needs the gradient at the previous "
                "parameters, which ChainOptimizer.step(closure) evaluates: step it with the closure"
            )
        return c.grad_at_previous.to(s["prev_param"].dtype)
