"""EFCP: M-FAC's gradient window stored compressed, with error feedback.

Modoranu, Kalinov, Kurtic, Frantar, Alistarh, "Error Feedback Can Accurately Compress
Preconditioners" (ICML 2024, arXiv 2306.06098). Each incoming gradient ``g_t`` is first added
to the error buffer, ``a_t = g_t + e_{t-1}``; the window receives the compressed ``C(a_t)`` and
the buffer keeps what was dropped, ``e_t = a_t - C(a_t)`` (so nothing is lost, only delayed).
The Fisher is then M-FAC's, ``F = lambda I + G^T G / m``, over the compressed rows, and the
optimizer's direction is ``F^{-1} C(a_t) = m G^T C e_slot`` (``functional.mfac``: the
coefficients ``C`` come from the Gram matrix ``K = G G^T`` whatever the rows' storage; only the
two products with the window, ``G x`` and ``G^T c``, depend on it).

Two compressions, each with its window storage:

- top-k (``ef_topk_``): the ``k`` entries of ``a_t`` largest in magnitude. A row is ``k``
  values and their ``k`` indices (int32 wherever the tensor has fewer than 2^31 elements, so an
  entry costs 8 bytes, not 12): ``sparse_*``.
- low rank (``ef_lowrank_``): one step of power iteration (PowerSGD, Vogels et al. 2019) on
  the accumulator viewed as an ``a x b`` matrix, warm-started from the previous step's right
  factor: ``P = orth(A Q)``, ``Q <- A^T P``, ``C(A) = P Q^T`` (rank ``r``). A row is the pair
  ``(P, Q)``, ``(a + b) r`` numbers: ``lowrank_*``. The Gram entry of two rows is
  ``<P_i Q_i^T, P Q^T>_F = sum_{rs} (P_i^T P)_{rs} (Q_i^T Q)_{rs}``.

Products keep ``functional.mfac``'s scaling (divide by ``max |x|``, multiply back in float64),
so float32 windows of huge or tiny gradients stay finite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from orthoptim.functional.mfac import _scale

_INT32_LIMIT = 2**31 - 1


def index_dtype(numel: int) -> torch.dtype:
    """int32 where every index of a ``numel``-element tensor fits it (halving a sparse row's
    index bytes), int64 otherwise."""
    return torch.int32 if numel <= _INT32_LIMIT else torch.int64


def topk_count(numel: int, density: float) -> int:
    """``k`` for a tensor of ``numel`` elements: ``int(density * numel)`` as the reference's
    ``get_k``, at least 1 (the reference's layer-wise top-k keeps 0 entries of a layer smaller
    than ``1 / density``, which would leave its window empty) and at most ``numel``."""
    return min(numel, max(1, int(density * numel)))


def ef_topk_(error: Tensor, g: Tensor, k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Error feedback around top-k, in place on ``error`` (shape ``(d,)``): ``a = g + error``;
    returns ``(values, indices)`` of the ``k`` largest ``|a|`` (indices in ``dtype``) and leaves
    ``error = a - C(a)`` (``a`` with those ``k`` entries zeroed)."""
    acc = error.add_(g)
    idx = acc.abs().topk(k, sorted=False).indices
    values = acc.index_select(0, idx)
    acc.index_fill_(0, idx, 0.0)
    return values, idx.to(dtype)


def sparse_gram_column(values: Tensor, indices: Tensor, x: Tensor) -> Tensor:
    """``G x`` in float64 (shape ``(m,)``) for the sparse window (rows ``values``,
    ``indices``, each ``(m, k)``) and a dense ``x`` of shape ``(d,)``: O(mk)."""
    s = _scale(x)
    gathered = (x / s).index_select(0, indices.reshape(-1)).view_as(values)
    return (values * gathered).sum(dim=1).double() * s.double()


def sparse_insert_(
    values: Tensor, indices: Tensor, gram: Tensor, slot: int, row: tuple[Tensor, Tensor], d: int
) -> None:
    """Put the sparse row ``row = (values, indices)`` of a ``d``-element gradient into row
    ``slot`` and update ``gram = G G^T`` to match: O(d + mk)."""
    values[slot], indices[slot] = row
    dense = values.new_zeros(d).index_put_((row[1].long(),), row[0])
    column = sparse_gram_column(values, indices, dense)
    gram[slot, :] = column
    gram[:, slot] = column


def sparse_combine(
    values: Tensor, indices: Tensor, scaled: Tensor, scale: Tensor, d: int
) -> Tensor:
    """``G^T c`` (shape ``(d,)``, the window's dtype) from ``scaled = c / scale`` (float64,
    ``functional.mfac.row_coefficients``): a scatter-add of the ``mk`` weighted entries."""
    weighted = values * scaled.to(values.dtype).unsqueeze(1)
    out = values.new_zeros(d).index_add_(0, indices.reshape(-1), weighted.reshape(-1))
    return (out.double() * scale).to(values.dtype)


def matrix_view_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(a, b)``: the tensor as the matrix low-rank compression factors, its first dimension
    by the rest (the reference's ``PowerIterationLayerCompressor``); a vector is ``(d, 1)``,
    which any rank >= 1 keeps exactly (the reference leaves vectors uncompressed), a scalar
    ``(1, 1)``."""
    if not shape:
        return (1, 1)
    rest = 1
    for n in shape[1:]:
        rest *= n
    return (shape[0], rest)


def orthonormal_columns(x: Tensor) -> Tensor:
    """Gram-Schmidt on the columns of ``x`` (``a x r``, r small): each column minus its
    components along the earlier ones, then normalised; a column with nothing left stays zero
    (device-side guard, no host read)."""
    cols: list[Tensor] = []
    for i in range(x.shape[1]):
        col = x[:, i]
        for prev in cols:
            col = col - (prev @ col) * prev
        norm = col.norm()
        cols.append(col / norm.clamp_min(torch.finfo(col.dtype).tiny))
    return torch.stack(cols, dim=1)


def ef_lowrank_(error: Tensor, g: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """Error feedback around one warm-started power step, in place on ``error`` (``a x b``) and
    ``basis`` (``b x r``, the previous right factor): ``A = g + error``, ``P = orth(A basis)``,
    ``Q = A^T P``; returns ``(P, Q)`` and leaves ``error = A - P Q^T``, ``basis = Q`` (a column
    of ``Q`` that came out zero keeps its old value, so a zero gradient does not collapse the
    iteration for good)."""
    acc = error.add_(g)
    p = orthonormal_columns(acc @ basis)
    q = acc.T @ p
    alive = q.abs().amax(dim=0, keepdim=True) > 0
    basis.copy_(torch.where(alive, q, basis))
    acc.sub_(p @ q.T)
    return p, q


def lowrank_gram_column(left: Tensor, right: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """``G x`` in float64 (shape ``(m,)``) for ``x = p q^T`` and the low-rank window whose row
    ``i`` is ``left[:, i] right[:, i]^T`` (``left`` ``(a, m, r)``, ``right`` ``(b, m, r)``):
    ``sum_{rs} (L_i^T p)_{rs} (R_i^T q)_{rs}``, O(m (a + b) r^2)."""
    sp, sq = _scale(p), _scale(q)
    lp = torch.einsum("air,as->irs", left, p / sp)
    rq = torch.einsum("bir,bs->irs", right, q / sq)
    return (lp * rq).sum(dim=(1, 2)).double() * (sp.double() * sq.double())


def lowrank_insert_(
    left: Tensor, right: Tensor, gram: Tensor, slot: int, p: Tensor, q: Tensor
) -> None:
    """Put the row ``p q^T`` into slot ``slot`` and update ``gram = G G^T``: O(m (a + b) r^2)."""
    left[:, slot] = p
    right[:, slot] = q
    column = lowrank_gram_column(left, right, p, q)
    gram[slot, :] = column
    gram[:, slot] = column


def lowrank_combine(left: Tensor, right: Tensor, scaled: Tensor, scale: Tensor) -> Tensor:
    """``G^T c = sum_i c_i L_i R_i^T`` (shape ``(a, b)``) from ``scaled = c / scale``: one
    ``(a, mr) x (mr, b)`` product."""
    a, m, r = left.shape
    weighted = (left * scaled.to(left.dtype).view(1, m, 1)).reshape(a, m * r)
    out = weighted @ right.reshape(right.shape[0], m * r).T
    return (out.double() * scale).to(left.dtype)
