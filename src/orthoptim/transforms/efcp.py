"""EFCP: M-FAC's inverse-Fisher preconditioner over a compressed, error-fed gradient window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_choice, check_positive, check_positive_int
from orthoptim._types import State
from orthoptim.functional.efcp import (
    ef_lowrank_,
    ef_topk_,
    index_dtype,
    lowrank_combine,
    lowrank_insert_,
    matrix_view_shape,
    sparse_combine,
    sparse_insert_,
    topk_count,
)
from orthoptim.functional.mfac import (
    DAMPING_RULES,
    DampingRule,
    block_gram,
    coefficients,
    gradient_normalized_damping,
    row_coefficients,
    squared_norm,
)
from orthoptim.functional.moments import stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase
from orthoptim.transforms.mfac import BLOCKS, Blocks, block_slot, repr_without_constant_rule

Compression = Literal["topk", "lowrank"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)

# Seed of the low-rank power iteration's first right factor: fixed, so a run (and a resumed
# one, which restores the factor from the state) is reproducible on every rank.
_BASIS_SEED = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EfcpPrecondition(TransformBase):
    r"""``u <- F^{-1} C(a)``, ``a = u + e``, ``e <- a - C(a)``, ``F`` over the compressed window.

    EFCP (Modoranu et al. 2024, arXiv 2306.06098): the incoming update plus the parameter's
    error-feedback buffer, ``a_t = u_t + e_{t-1}``, is compressed (``compression``), the
    compressed ``C(a_t)`` replaces the oldest row of M-FAC's window (slot
    ``(step - 1) mod m``, a ring buffer keyed on the step, as ``MFacPrecondition``), the buffer
    keeps the rest, ``e_t = a_t - C(a_t)``, and the output is ``F^{-1} C(a_t)`` with
    ``F = lambda I + G^T G / m`` over the compressed rows (``functional.efcp``; the reference
    also preconditions the compressed accumulator, ``precondition_sparse_grad=True``).

    Compression (``compression``): ``"topk"``, the ``max(1, int(density d))`` entries largest in
    magnitude of each parameter's accumulator, stored as values and int32 indices (int64 only
    for tensors of 2^31 elements or more); ``"lowrank"``, a rank-``rank`` factorisation by one
    warm-started power step (PowerSGD) of the accumulator viewed as a matrix (first dimension by
    the rest; a vector is a column, which rank 1 keeps exactly). ``density=1`` or a rank at
    least the matrix's smaller side compress nothing: the transform is then M-FAC's
    (``MFacPrecondition``) up to round-off.

    Blocks (``blocks``): as ``MFacPrecondition``: ``"parameter"`` (each parameter its own
    window and Gram matrix; distributed steps work) or ``"model"`` (one window over the route,
    its Gram matrix the sum of the parameters', one ``eigh`` per step; one process only). The
    error buffer is per parameter in both (an elementwise buffer: the same numbers as the
    reference's one flat buffer over the model), and so is the compression (top-k per tensor:
    the reference's layer-wise option; its default takes the top-k of the whole flattened model).

    State: ``gram`` (m x m, float64), ``error`` (d, the parameter's numel), and with
    ``"topk"`` ``values`` (m x k) and ``indices`` (m x k, int32); with ``"lowrank"`` ``left``
    (a x m x r), ``right`` (b x m x r) and ``basis`` (b x r, the power iteration's warm start).
    Floats are float32 for 16-bit parameters, else the parameter's dtype. Bytes per float32
    element (``state_bytes``): top-k ``8 m k / d + 4`` (~ ``8 m density + 4``), low rank
    ``4 m (a + b) r / (a b) + 4``, against dense M-FAC's ``4 m``; plus ``8 m^2`` per tensor.

    Args:
        window: number of compressed gradients ``m``, >= 1.
        damping: ``lambda``, > 0, absolute (``MFacPrecondition``; raised to the Gram matrix's
            round-off level where ``m lambda`` is below it).
        blocks: ``"parameter"`` or ``"model"``.
        compression: ``"topk"`` or ``"lowrank"``.
        density: fraction of entries top-k keeps, in (0, 1].
        rank: rank of the low-rank compression, >= 1 (capped at the matrix's smaller side).
        damping_rule: ``"constant"`` (default, the reference) or ``"gradient_normalized"``:
            ``lambda_t = damping ||g_t||`` (``MFacPrecondition``), ``g_t`` the block's incoming
            update before error feedback and compression (the gradient the paper's rule
            normalises by, not its compressed row).
    """

    key: ClassVar[str] = "efcp"
    formula: ClassVar[str] = (
        r"a \leftarrow u + e;\; G_{(t-1) \bmod m} \leftarrow C(a);\; e \leftarrow a - C(a);\;"
        r"u \leftarrow (\lambda I + G^\top G / m)^{-1} C(a)"
    )
    window: int = 128
    damping: float = 1e-2
    blocks: Blocks = "parameter"
    compression: Compression = "topk"
    density: float = 0.01
    rank: int = 4
    damping_rule: DampingRule = "constant"

    def __post_init__(self) -> None:
        check_positive_int("window", self.window)
        check_positive("damping", self.damping)
        check_choice("blocks", self.blocks, BLOCKS)
        check_choice("compression", self.compression, COMPRESSIONS)
        check_positive("density", self.density)
        if self.density > 1:
            raise ValueError(f"density must be in (0, 1], got {self.density!r}")
        check_positive_int("rank", self.rank)
        check_choice("damping_rule", self.damping_rule, DAMPING_RULES)

    def __repr__(self) -> str:
        return repr_without_constant_rule(self)

    @property
    def route_wide(self) -> bool:
        return self.blocks == "model"

    def init(self, p: Tensor) -> dict[str, Tensor]:
        m, d, dtype, dev = self.window, p.numel(), stats_dtype(p), p.device
        state = {
            "gram": torch.zeros(m, m, dtype=torch.float64, device=dev),
            "error": torch.zeros(d, dtype=dtype, device=dev),
        }
        if self.compression == "topk":
            k = topk_count(d, self.density)
            state["values"] = torch.zeros(m, k, dtype=dtype, device=dev)
            state["indices"] = torch.zeros(m, k, dtype=index_dtype(d), device=dev)
            return state
        a, b = matrix_view_shape(tuple(p.shape))
        r = min(self.rank, a, b)
        generator = torch.Generator().manual_seed(_BASIS_SEED)
        basis = torch.randn(b, r, generator=generator, dtype=torch.float64)
        state["left"] = torch.zeros(a, m, r, dtype=dtype, device=dev)
        state["right"] = torch.zeros(b, m, r, dtype=dtype, device=dev)
        state["basis"] = basis.to(device=dev, dtype=dtype)
        return state

    def state_bytes(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
        """Bytes of one parameter's state (``init``'s tensors), from the shape alone."""
        return sum(
            t.numel() * t.element_size()
            for t in self.init(torch.empty(shape, dtype=dtype, device="meta")).values()
        )

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self.apply_many([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        """Each parameter compressed and inserted apart; the m x m work batched per device and
        dtype (``"parameter"``) or done once for the route (``"model"``), as
        ``MFacPrecondition.apply_many``."""
        if not us:
            return us
        if self.blocks == "model":
            slot = block_slot(cs, self.window, "efcp")
            slots = [slot] * len(us)
        else:
            slots = [(int(c.step) - 1) % self.window for c in cs]
        norms = None if self.damping_rule == "constant" else [squared_norm(u) for u in us]
        for u, s, slot in zip(us, ss, slots, strict=True):
            self._insert(u, s, slot)
        if self.blocks == "model":
            # K is known to ~m eps relative in the coarsest dtype of its pieces (``coefficients``).
            eps = max(torch.finfo(s["error"].dtype).eps for s in ss)
            gram = block_gram([s["gram"] for s in ss])
            damping: float | Tensor = (
                self.damping if norms is None else gradient_normalized_damping(self.damping, norms)
            )
            coef = coefficients(gram, damping, resolution=self.window * eps)
            scaled, scale = row_coefficients(coef, slots[0])
            return [self._combine(u, s, scaled, scale) for u, s in zip(us, ss, strict=True)]
        same: dict[tuple[Any, ...], list[int]] = {}
        for i, s in enumerate(ss):
            same.setdefault((s["error"].device, s["error"].dtype), []).append(i)
        out = list(us)
        for (_, dtype), members in same.items():
            resolution = self.window * torch.finfo(dtype).eps
            dampings: float | Tensor = self.damping
            if norms is not None:
                dampings = torch.stack(
                    [gradient_normalized_damping(self.damping, [norms[i]]) for i in members]
                )
            coefs = coefficients(
                torch.stack([ss[i]["gram"] for i in members]), dampings, resolution=resolution
            )
            for i, coef in zip(members, coefs, strict=True):
                scaled, scale = row_coefficients(coef, slots[i])
                out[i] = self._combine(us[i], ss[i], scaled, scale)
        return out

    def _insert(self, u: Tensor, s: State, slot: int) -> None:
        """``a = u + e``; ``C(a)`` into row ``slot`` of the window; ``e <- a - C(a)``."""
        error = s["error"]
        g = u.reshape(-1).to(error.dtype)
        if self.compression == "topk":
            values, indices = s["values"], s["indices"]
            row = ef_topk_(error, g, values.shape[1], indices.dtype)
            sparse_insert_(values, indices, s["gram"], slot, row, error.numel())
            return
        left, right = s["left"], s["right"]
        shape = (left.shape[0], right.shape[0])
        p, q = ef_lowrank_(error.view(shape), g.view(shape), s["basis"])
        lowrank_insert_(left, right, s["gram"], slot, p, q)

    def _combine(self, u: Tensor, s: State, scaled: Tensor, scale: Tensor) -> Tensor:
        """``u <- G^T c`` for the window's coefficients ``c = scaled * scale``."""
        dev = s["gram"].device
        scaled, scale = scaled.to(dev), scale.to(dev)
        if self.compression == "topk":
            x = sparse_combine(s["values"], s["indices"], scaled, scale, u.numel())
        else:
            x = lowrank_combine(s["left"], s["right"], scaled, scale)
        return u.copy_(x.view(u.shape))

    def cost(self, shape: tuple[int, ...]) -> float:
        # Compression (top-k selection ~ d; a power step 4 d r), the Gram column and G^T c over
        # the stored numbers (2 each per stored number and slot), the eigh of the m x m Gram
        # matrix (9 m^3) per parameter, or per route with blocks="model" (m^2 per parameter).
        d, m = math.prod(shape), self.window
        if self.compression == "topk":
            stored, compress = float(topk_count(d, self.density)), float(d)
        else:
            a, b = matrix_view_shape(shape)
            r = min(self.rank, a, b)
            stored, compress = float((a + b) * r * r), 4.0 * d * r
        per_block = 9.0 * m**3 if self.blocks == "parameter" else float(m**2)
        return compress + 4.0 * m * stored + per_block + 2.0 * m**2
