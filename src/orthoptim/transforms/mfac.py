"""M-FAC: precondition by the inverse empirical Fisher of a sliding window of gradients."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from orthoptim._checks import check_positive, check_positive_int
from orthoptim._types import State
from orthoptim.functional.mfac import coefficients, ihvp_of_rows, insert_
from orthoptim.functional.moments import stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase


@dataclass(frozen=True, slots=True, kw_only=True)
class MFacPrecondition(TransformBase):
    r"""``u <- F^{-1} u`` with ``F = lambda I + G^T G / m``, ``G`` the last ``m`` incoming updates.

    M-FAC's dynamic algorithm (Frantar et al. 2021, arXiv 2107.03356), one block per parameter:
    the incoming update (flattened, ``d`` elements) replaces the oldest row of the window (slot
    ``(step - 1) mod m``, so the window is a ring buffer keyed on the step and resumes exactly),
    then ``F^{-1} u`` is computed with the window's Gram matrix (``functional.mfac``); a group's
    m x m work runs batched (``apply_many``). Per step
    that is O(dm) for the Gram column and the product plus O(m^3) for the m x m coefficients.
    Before the window is full its empty slots are zero rows and ``F`` still divides by ``m``.

    Blocks: the reference flattens the whole model into one block; here every parameter is its
    own block (a block-diagonal Fisher, as the reference's pruner does with its blocks). So the
    transform runs per parameter like every other one, and the m x m work is per parameter.

    State: ``grads`` (m x d, the window: float32 for 16-bit parameters, else the parameter's
    dtype) and ``gram`` (m x m, float64). Memory: m times the parameter's size (m x 4 bytes per
    float32 element) plus 8 m^2 bytes.

    Args:
        window: number of gradients ``m`` in the window, >= 1.
        damping: ``lambda``, > 0, absolute (not relative to the gradients' scale), as in the
            reference. Where ``||G||^2`` is so large that ``m lambda`` drops below the Gram
            matrix's round-off (``m eps`` times its largest eigenvalue), that level is used.
    """

    key: ClassVar[str] = "mfac"
    formula: ClassVar[str] = (
        r"G_{(t-1) \bmod m} \leftarrow u;\;"
        r"u \leftarrow (\lambda I + G^\top G / m)^{-1} u = m\, G^\top (m\lambda I + G G^\top)^{-1}"
        r" e_{(t-1) \bmod m}"
    )
    window: int = 16
    damping: float = 1e-3

    def __post_init__(self) -> None:
        check_positive_int("window", self.window)
        check_positive("damping", self.damping)

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
        the batched product's round-off (float64, ``functional.mfac.coefficients``)."""
        slots = [(c.step - 1) % self.window for c in cs]
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
            coefs = coefficients(grams, self.damping, resolution=resolution)
            windows = [ss[i]["grads"] for i in members]
            directions = ihvp_of_rows(windows, coefs, [slots[i] for i in members])
            for i, direction in zip(members, directions, strict=True):
                out[i] = us[i].copy_(direction.view(us[i].shape))
        return out

    def cost(self, shape: tuple[int, ...]) -> float:
        # Gram column and G^T c: 2 m d each; eigh of the m x m Gram matrix: about 9 m^3.
        d, m = math.prod(shape), self.window
        return 4.0 * m * d + 9.0 * m**3 + 2.0 * m**2
