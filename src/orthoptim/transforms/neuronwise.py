"""Per-neuron (row) second moments of an orthogonalised update: NorMuon's normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_matrix, check_positive
from orthoptim._types import State
from orthoptim.functional.moments import ema_, stats_dtype
from orthoptim.functional.polar import matrix_view
from orthoptim.transforms.base import Ctx, TransformBase


@dataclass(frozen=True, slots=True, kw_only=True)
class NormalizeNeurons(TransformBase):
    r"""NorMuon's neuron-wise normalisation (Li et al., arXiv 2510.05491), after orthogonalisation.

    With ``U`` the update's ``(out, in*kh*kw)`` matrix view and ``i`` a row (an output neuron):
    ``v_i <- beta2 v_i + (1 - beta2) mean_j U_ij^2``; ``U_ij <- U_ij / (sqrt(v_i) + eps)``; then
    the whole matrix is rescaled to its Frobenius norm before the division,
    ``U <- U ||U_before||_F / (||U||_F + eps)``. No bias correction, as the reference: ``v`` is
    shared by the rows of one matrix, so the correction would be one scalar, which the rescale
    removes (up to ``eps``).

    State: ``v_row``, shape ``(out, 1)``; float32 for 16-bit parameters (the arithmetic runs in
    that dtype, the update is cast back).

    Args:
        beta2: EMA coefficient of the row second moment, in [0, 1); 0 normalises every row of
            the current update to the same norm.
        eps: added to ``sqrt(v)`` and to the new Frobenius norm, > 0.
    """

    key: ClassVar[str] = "normuon"
    formula: ClassVar[str] = (
        r"v_i \leftarrow \beta_2 v_i + (1-\beta_2)\,\mathrm{mean}_j u_{ij}^2;\;"
        r"u_{ij} \leftarrow \|u\|_F\, \tilde u_{ij} / \|\tilde u\|_F,\;"
        r"\tilde u_{ij} = u_{ij} / (\sqrt{v_i} + \epsilon)"
    )
    beta2: float = 0.95
    eps: float = 1e-10

    def __post_init__(self) -> None:
        check_beta("beta2", self.beta2)
        check_positive("eps", self.eps)

    def validate(self, p: Tensor, name: str) -> None:
        check_matrix("NormalizeNeurons", tuple(p.shape), name)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = stats_dtype(p)
        return {"v_row": torch.zeros(p.shape[0], 1, dtype=dtype, device=p.device)}

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        # One pass reads the row sums of squares, in v's dtype without a float32 copy of a
        # 16-bit update; both Frobenius norms follow from them (the divided matrix's is
        # sum_i r_i / d_i^2), and one in-place multiply by a per-row factor applies the
        # division and the rescale together: two passes over the matrix where dividing,
        # re-measuring and rescaling it took six (equal up to rounding).
        v = s["v_row"]
        m = matrix_view(u)
        rows_sq = torch.linalg.vector_norm(m, dim=1, keepdim=True, dtype=v.dtype).square_()
        ema_(v, rows_sq / m.shape[1], self.beta2)
        divisor = v.sqrt().add_(self.eps)
        norm_before = rows_sq.sum().sqrt_()
        norm_after = (rows_sq / divisor.square()).sum().sqrt_()
        factor = divisor.reciprocal_().mul_(norm_before / norm_after.add_(self.eps))
        if m.data_ptr() == u.data_ptr() and m.is_contiguous():
            m.mul_(factor)  # a 16-bit update rounds once, as the float32 product cast back
            return u
        return (m * factor).to(u.dtype).reshape(u.shape)
