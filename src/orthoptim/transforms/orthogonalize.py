"""Replace a matrix update by (an approximation of) its polar factor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import (
    check_choice,
    check_matrix,
    check_optional_bool,
    check_positive,
    check_positive_int,
)
from orthoptim._types import State
from orthoptim.functional.coefficients import PRESET_NAMES, resolve_preset
from orthoptim.functional.polar import (
    PRE_NORMS,
    PreNorm,
    matrix_view,
    newton_schulz,
    polar_health,
)
from orthoptim.transforms.base import Ctx, TransformBase

ComputeDtype = Literal["bfloat16", "float32", "float64", "input"]
COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDtype)


@dataclass(frozen=True, slots=True, kw_only=True)
class Orthogonalize(TransformBase):
    r"""``u <- NS(u)``: Newton-Schulz approximation of the polar factor ``U V^T`` of ``u``.

    Conv kernels are orthogonalised as their ``(out, in*kh*kw)`` matrix view. The iteration runs
    in ``compute_dtype`` (``"input"``: the update's own dtype) and the result is cast back to the
    update's dtype, so the rest of the chain accumulates in the parameter's precision.

    Args:
        coeffs: coefficient preset name: a plain preset (``functional.coefficients.PRESETS``)
            or a shape-keyed one (``SHAPE_KEYED_PRESETS``, resolved per matrix view shape).
        ns_steps: number of iterations (the preset's last triple repeats past its schedule).
        pre_norm: ``"frobenius"`` (``X/(||X||+eps)``, Keller) or ``"frobenius_clamp"``
            (``X/max(||X||, eps)``, torch.optim.Muon).
        eps: the pre-normalisation's guard against a zero matrix.
        compute_dtype: ``"bfloat16"``, ``"float32"``, ``"float64"`` or ``"input"``.
        batch_by_shape: orthogonalise a group's same-shape matrices together, one batched
            iteration (``bmm``) per shape, instead of one matrix at a time. The same
            computation (equal up to the batched kernels' rounding, tested); ``True``: always,
            at the cost of the whole group's working copies alive at once (the chain then runs
            transform-major): faster where batched products pay (an AMX CPU:
            benchmarks/records/2026-12-06_step-speed-6). ``None`` (default): where the step
            runs multi-tensor (``foreach``, a GPU's default), whose working copies are all
            alive anyway, and where it cuts the kernel launches of a Muon step about threefold
            (benchmarks/records/2026-12-06_op-counts); one at a time otherwise (the CPU
            default, measured faster on the AMD VM, benchmarks/records/2026-11-25_step-speed-4).
            ``False``: never. An execution choice, not part of the update rule: left out of
            ``repr`` (and so of the chain a checkpoint is checked against).
    """

    key: ClassVar[str] = "orthogonalize"
    capturable: ClassVar[bool] = True
    formula: ClassVar[str] = r"u \leftarrow \mathrm{NS}_{k}(u / \|u\|_F) \approx UV^\top"
    coeffs: str = "keller_quintic"
    ns_steps: int = 5
    pre_norm: PreNorm = "frobenius"
    eps: float = 1e-7
    compute_dtype: ComputeDtype = "bfloat16"
    batch_by_shape: bool | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_choice("coeffs", self.coeffs, PRESET_NAMES)
        check_positive_int("ns_steps", self.ns_steps)
        check_choice("pre_norm", self.pre_norm, PRE_NORMS)
        check_positive("eps", self.eps)
        check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        check_optional_bool("batch_by_shape", self.batch_by_shape)

    def validate(self, p: Tensor, name: str) -> None:
        check_matrix(
            "Orthogonalize",
            tuple(p.shape),
            name,
            "route vectors to another chain (e.g. build(..., model), which brings AdamW for them)",
        )

    def cost(self, shape: tuple[int, ...]) -> float:
        # Per iteration: X X^T (2 m^2 n), the quadratic in it (2 m^3), its product with X
        # (2 m^2 n), for the m x n matrix view with m <= n.
        rows, cols = shape[0], math.prod(shape[1:])
        m, n = min(rows, cols), max(rows, cols)
        return float(self.ns_steps * (4 * m * m * n + 2 * m**3))

    @property
    def groupwise(self) -> bool:
        return self.batch_by_shape is True

    @property
    def batches(self) -> bool:
        return self.batch_by_shape is None

    def _polar(self, matrices: Tensor) -> Tensor:
        """The iteration on ``(..., m, n)`` matrices, in ``compute_dtype``."""
        preset = resolve_preset(self.coeffs, matrices.shape[-2], matrices.shape[-1])
        dtype = None if self.compute_dtype == "input" else getattr(torch, self.compute_dtype)
        return newton_schulz(
            matrices,
            preset.schedule(self.ns_steps),
            norm_safety=preset.norm_safety,
            eps=self.eps,
            pre_norm=self.pre_norm,
            compute_dtype=dtype,
        )

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return _cast_into(u, _recorded(c, self._polar(matrix_view(u))))

    def apply_narrow(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        """The factor in ``compute_dtype`` where ``u.dtype`` holds its values exactly (a
        bfloat16 factor of a float32 update, which torch.optim.Muon adds to the parameter as
        it is), else ``apply``'s cast into ``u``."""
        polar = _recorded(c, self._polar(matrix_view(u)))
        if not _holds_exactly(u.dtype, polar.dtype):
            return _cast_into(u, polar)
        return polar if polar.shape == u.shape else polar.reshape(u.shape)

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        batch = self.batch_by_shape
        if batch is None:
            batch = any(c.multi_tensor for c in cs)
        if not batch:
            return [self.apply(u, s, c) for u, s, c in zip(us, ss, cs, strict=True)]
        out = list(us)
        same: dict[tuple[Any, ...], list[int]] = {}
        for i, u in enumerate(us):
            view = matrix_view(u)
            same.setdefault((tuple(view.shape), u.dtype, u.device), []).append(i)
        for members in same.values():
            if len(members) == 1:
                i = members[0]
                out[i] = self.apply(us[i], ss[i], cs[i])
                continue
            polar = self._polar(torch.stack([matrix_view(us[i]) for i in members]))
            for i, factor in zip(members, polar, strict=True):
                _recorded(cs[i], factor)
                out[i] = factor.to(us[i].dtype).reshape(us[i].shape)
        return out


def _recorded(c: Ctx, polar: Tensor) -> Tensor:
    """``polar``, its health (``functional.polar.polar_health``) recorded on a telemetry step."""
    if c.record is not None:
        c.record("polar_health", polar_health(polar))
    return polar


def _cast_into(u: Tensor, polar: Tensor) -> Tensor:
    """``polar`` in ``u``'s dtype and shape: cast into ``u``, the chain's working copy, where it
    is contiguous (saves an allocation, and its page faults, for the same values)."""
    if not u.is_contiguous():
        return polar.to(u.dtype).reshape(u.shape)
    matrix_view(u).copy_(polar)
    return u


def _holds_exactly(wide: torch.dtype, narrow: torch.dtype) -> bool:
    """Whether every value of floating dtype ``narrow`` is one of ``wide`` (bfloat16 and float16
    in float32, float32 in float64). Compared by size, not ``torch.promote_types``, which
    dispatches as an op."""
    return narrow == wide or (
        narrow.is_floating_point and wide.is_floating_point and narrow.itemsize < wide.itemsize
    )
