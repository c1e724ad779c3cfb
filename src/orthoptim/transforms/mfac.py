"""M-FAC: precondition by the inverse empirical Fisher of a sliding window of gradients."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_choice, check_positive, check_positive_int
from orthoptim._types import State
from orthoptim.functional.mfac import (
    DAMPING_RULES,
    DampingRule,
    block_gram,
    coefficients,
    gradient_normalized_damping,
    ihvp_of_row_split,
    ihvp_of_rows,
    insert_,
    squared_norm,
)
from orthoptim.functional.moments import stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase

Blocks = Literal["parameter", "model"]
BLOCKS: tuple[str, ...] = get_args(Blocks)


def block_slot(cs: Sequence[Ctx], window: int, name: str) -> int:
    """The window slot ``(step - 1) mod window`` of a model-wide block, whose parameters must
    share one step count (one window row across all of them): ``ValueError`` naming their
    counts where they differ (a parameter without a gradient at some step skipped it)."""
    steps = [int(c.step) for c in cs]
    if len(set(steps)) > 1:
        counts = {
            c.name or f"#{i}": step for i, (c, step) in enumerate(zip(cs, steps, strict=True))
        }
        raise ValueError(
            f"{name} blocks='model' needs a gradient for every parameter of the route at every "
            f"step (one window over all of them); their step counts differ: {counts}. Give "
            "every parameter a gradient (zero for an unused one), or use blocks='parameter'"
        )
    return (steps[0] - 1) % window


def repr_without_constant_rule(t: object) -> str:
    """The dataclass repr of ``t`` without ``damping_rule`` where it is ``"constant"``: a
    checkpoint is checked against its chain's repr, and those written before the option
    existed must still load."""
    shown = [
        f"{f.name}={getattr(t, f.name)!r}"
        for f in dataclasses.fields(t)  # type: ignore[arg-type]
        if f.repr and (f.name != "damping_rule" or getattr(t, f.name) != "constant")
    ]
    return f"{type(t).__name__}({', '.join(shown)})"


@dataclass(frozen=True, slots=True, kw_only=True)
class MFacPrecondition(TransformBase):
    r"""``u <- F^{-1} u`` with ``F = lambda I + G^T G / m``, ``G`` the last ``m`` incoming updates.

    M-FAC's dynamic algorithm (Frantar et al. 2021, arXiv 2107.03356): the incoming update
    (flattened, ``d`` elements) replaces the oldest row of its block's window (slot
    ``(step - 1) mod m``, so the window is a ring buffer keyed on the step and resumes exactly),
    then ``F^{-1} u`` is computed with the window's Gram matrix (``functional.mfac``). Per step
    that is O(dm) for the Gram column and the product plus O(m^3) for the m x m coefficients.
    Before the window is full its empty slots are zero rows and ``F`` still divides by ``m``.

    Blocks (``blocks``): ``"parameter"``, every parameter its own block (a block-diagonal
    Fisher, as the reference's pruner does with its blocks): the transform runs per parameter
    like every other one, a group's m x m work batched (``apply_many``), and it runs under a
    distributed step (each block lives on its owner). ``"model"``, the reference optimizer's
    one block over the flattened gradients of every parameter of the route, in every param
    group of it (``route_wide``: the shell hands it the route's groups together,
    ``eager.run_route``): the Gram matrix is the sum of the parameters' (each keeps its own
    columns of the window and their Gram matrix ``G_i G_i^T``), its ``eigh`` and the
    coefficient column are computed once per step for all of them, and ``F^{-1} g`` is split
    back into the parameters' pieces (``functional.mfac.block_gram``, ``ihvp_of_row_split``).
    It needs every parameter of the route in one process (``ValueError`` under a distributed
    step, whose owner ranks see only their own parameters) and a gradient for each of them at
    every step, as the reference does (``ValueError`` naming them where their step counts
    differ: a parameter without a gradient at some step skipped it, and the block's rows would
    no longer line up).

    State (both blocks): ``grads`` (m x d, the parameter's columns of the window: float32 for
    16-bit parameters, else the parameter's dtype) and ``gram`` (m x m, float64, their Gram
    matrix). Memory: m times the parameter's size (m x 4 bytes per float32 element) plus 8 m^2
    bytes per parameter; ``"model"`` adds one transient m x m sum per step.

    Args:
        window: number of gradients ``m`` in the window, >= 1.
        damping: ``lambda``, > 0, absolute (not relative to the gradients' scale), as in the
            reference. Where ``||G||^2`` is so large that ``m lambda`` drops below the Gram
            matrix's round-off (``m eps`` times its largest eigenvalue), that level is used.
        blocks: ``"parameter"`` or ``"model"`` (above).
        damping_rule: ``"constant"`` (default, the reference): ``lambda = damping``;
            ``"gradient_normalized"``: ``lambda_t = damping ||g_t||``, ``g_t`` the block's
            incoming update (the whole route's with ``blocks="model"``, the parameter's
            otherwise), the gradient-regularized Newton damping of Semenov, Jaggi, Doikov 2025
            (arXiv 2506.13710, Algorithm 1 with ``gamma = 1 / damping`` fixed:
            ``functional.mfac.gradient_normalized_damping``): the damping shrinks as the
            gradients do, so steps lengthen toward Newton's near a minimum and shorten far from
            it. The norm stays a device tensor (no host read).
    """

    key: ClassVar[str] = "mfac"
    formula: ClassVar[str] = (
        r"G_{(t-1) \bmod m} \leftarrow u;\;"
        r"u \leftarrow (\lambda I + G^\top G / m)^{-1} u = m\, G^\top (m\lambda I + G G^\top)^{-1}"
        r" e_{(t-1) \bmod m}"
    )
    window: int = 16
    damping: float = 1e-3
    blocks: Blocks = "parameter"
    damping_rule: DampingRule = "constant"

    def __post_init__(self) -> None:
        check_positive_int("window", self.window)
        check_positive("damping", self.damping)
        check_choice("blocks", self.blocks, BLOCKS)
        check_choice("damping_rule", self.damping_rule, DAMPING_RULES)

    def __repr__(self) -> str:
        return repr_without_constant_rule(self)

    def block_damping(self, us: Sequence[Tensor]) -> float | Tensor:
        """The damping of the block made of ``us`` this step (``damping_rule``)."""
        if self.damping_rule == "constant":
            return self.damping
        return gradient_normalized_damping(self.damping, [squared_norm(u) for u in us])

    @property
    def route_wide(self) -> bool:
        return self.blocks == "model"

    def init(self, p: Tensor) -> dict[str, Tensor]:
        return {
            "grads": torch.zeros(self.window, p.numel(), dtype=stats_dtype(p), device=p.device),
            "gram": torch.zeros(self.window, self.window, dtype=torch.float64, device=p.device),
        }

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self.apply_many([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        """Each parameter's window and Gram column apart (they differ in length); the m x m work
        (``eigh`` of the Gram matrices, the coefficient columns) batched over the parameters
        whose windows share a device and dtype. The values are one parameter's at a time up to
        the batched product's round-off (float64, ``functional.mfac.coefficients``). With
        ``blocks="model"``, all of ``us`` form one block (``_apply_block``)."""
        if self.blocks == "model":
            return self._apply_block(us, ss, cs)
        slots = [(c.int_step - 1) % self.window for c in cs]
        same: dict[tuple[Any, ...], list[int]] = {}
        for i, (u, s, slot) in enumerate(zip(us, ss, slots, strict=True)):
            grads = s["grads"]
            insert_(grads, s["gram"], slot, u.reshape(-1).to(grads.dtype))
            same.setdefault((grads.device, grads.dtype), []).append(i)
        out = list(us)
        for (_, dtype), members in same.items():
            # K is known to ~m eps relative (m-term dot products): directions of K below that
            # are round-off, and the damping is raised to that level (``coefficients``).
            resolution = self.window * torch.finfo(dtype).eps
            grams = torch.stack([ss[i]["gram"] for i in members])
            damping: float | Tensor = self.damping
            if self.damping_rule != "constant":
                damping = torch.stack(
                    [
                        gradient_normalized_damping(self.damping, [squared_norm(us[i])])
                        for i in members
                    ]
                )
            coefs = coefficients(grams, damping, resolution=resolution)
            windows = [ss[i]["grads"] for i in members]
            directions = ihvp_of_rows(windows, coefs, [slots[i] for i in members])
            for i, direction in zip(members, directions, strict=True):
                out[i] = us[i].copy_(direction.view(us[i].shape))
        return out

    def _apply_block(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        """One block over all of ``us``: each parameter's columns of the window and its Gram
        matrix updated apart, then one ``eigh`` of their sum and one coefficient column, and
        ``F^{-1} g`` split back into the parameters' pieces."""
        if not us:
            return us
        slot = block_slot(cs, self.window, "mfac")
        for u, s in zip(us, ss, strict=True):
            insert_(s["grads"], s["gram"], slot, u.reshape(-1).to(s["grads"].dtype))
        # K is known to ~m eps relative in the coarsest dtype of its pieces (``coefficients``).
        eps = max(torch.finfo(s["grads"].dtype).eps for s in ss)
        gram = block_gram([s["gram"] for s in ss])
        coef = coefficients(gram, self.block_damping(us), resolution=self.window * eps)
        directions = ihvp_of_row_split([s["grads"] for s in ss], coef, slot)
        return [u.copy_(x.view(u.shape)) for u, x in zip(us, directions, strict=True)]

    def cost(self, shape: tuple[int, ...]) -> float:
        # Gram column and G^T c: 2 m d each; eigh of the m x m Gram matrix: about 9 m^3, once
        # per parameter, or with blocks="model" once per route (in no parameter's cost), where
        # each parameter adds its Gram matrix to the sum instead (m^2).
        d, m = math.prod(shape), self.window
        per_block = 9.0 * m**3 if self.blocks == "parameter" else float(m**2)
        return 4.0 * m * d + per_block + 2.0 * m**2
