"""M-FAC's dynamic algorithm: inverse empirical-Fisher-vector products over a window of gradients.

The window holds ``m`` gradients as the rows of ``G`` (``m x d``; unused slots are zero rows) and
the damped empirical Fisher is ``F = lambda I + G^T G / m`` (Frantar, Kurtic, Alistarh 2021,
arXiv 2107.03356). With the Gram matrix ``K = G G^T`` and the m x m coefficient matrix
``C = (m lambda I + K)^{-1}``, the Woodbury identity gives

    F^{-1} x = (x - G^T C G x) / lambda               for any x          (``ihvp``)
    F^{-1} G^T e_j = m G^T C e_j                       for row j of G     (``ihvp_of_row``)

(the second from ``F^{-1} G^T = G^T (lambda I + K / m)^{-1}``). Costs: ``K`` is kept up to date
with one product ``G g`` per added or removed gradient, O(dm); ``C`` from ``K`` is O(m^3); an
IHVP is O(dm + m^2). The row form has no cancellation, whereas ``x / lambda - ...`` loses about
``log10(||G||^2 / (m lambda))`` digits when ``x`` lies in the window's span (as the reference
code's form does); an optimizer always multiplies the gradient it has just added, so it uses the
row form.

``C`` comes from ``eigh`` of ``K`` in float64 with the eigenvalues clamped at 0, so it exists and
is finite for every window, rank-deficient ones included (zero or repeated gradients, ``m > d``):
``K`` is positive semi-definite, and a rounding error that makes an eigenvalue negative must not
bring ``m lambda + w`` near 0. The reference (IST-DASLab/M-FAC ``optim.py``) builds the same
inverse by a sequential rank-one Woodbury recursion (an unpivoted LU of ``m I + K / lambda``).

One block may span several tensors (M-FAC's model-wide block: the flattened gradients of many
parameters side by side): with ``G = [G_1 ... G_P]`` split by columns, ``K = sum_i G_i G_i^T``
(``block_gram``) and ``F^{-1} G^T e_j`` splits into the pieces ``m G_i^T C e_j``
(``ihvp_of_row_split``), so no piece is ever copied into one long window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

DampingRule = Literal["constant", "gradient_normalized"]
DAMPING_RULES: tuple[str, ...] = get_args(DampingRule)


def _scale(x: Tensor) -> Tensor:
    """``max |x|`` (at least the smallest normal number): dividing by it before a product and
    multiplying the float64 result back keeps float32 products of huge or tiny vectors finite."""
    return x.abs().amax().clamp_min(torch.finfo(x.dtype).tiny)


def gram_column(window: Tensor, g: Tensor) -> Tensor:
    """``G g`` in float64 (shape ``(m,)``), computed in the window's dtype without overflow."""
    s = _scale(g)
    return (window @ (g / s)).double() * s.double()


def insert_(window: Tensor, gram: Tensor, slot: int, g: Tensor) -> None:
    """Put ``g`` (shape ``(d,)``) into row ``slot`` of the window, replacing what was there, and
    update the Gram matrix ``gram = G G^T`` (float64) to match: O(dm)."""
    window[slot] = g
    column = gram_column(window, window[slot])
    gram[slot, :] = column
    gram[:, slot] = column


def remove_(window: Tensor, gram: Tensor, slot: int) -> None:
    """Empty row ``slot`` of the window (a zero row adds nothing to ``G^T G``): O(d + m)."""
    window[slot].zero_()
    gram[slot, :] = 0.0
    gram[:, slot] = 0.0


def squared_norm(g: Tensor) -> Tensor:
    """``||g||^2`` as a float64 0-d tensor on ``g``'s device (no host read; no overflow for
    float32 entries above 1e19, whose squares would)."""
    return torch.linalg.vector_norm(g, dtype=torch.float64).square()


def gradient_normalized_damping(damping: float, squared_norms: Sequence[Tensor]) -> Tensor:
    """``lambda_t = damping ||g_t||`` (float64, 0-d, on the first tensor's device) for a block
    whose gradient has the pieces of squared norms ``squared_norms``.

    Semenov, Jaggi, Doikov 2025 ("Gradient-Normalized Smoothness for Optimization with
    Approximate Hessians", arXiv 2506.13710), Algorithm 1: the gradient-regularized Newton step
    ``x+ = x - (H + lambda_k I)^{-1} g_k`` with ``lambda_k = ||g_k|| / gamma_k``; here
    ``gamma_k = 1 / damping`` is fixed (the authors' code without its adaptive search,
    ``grad_norm_smooth(adaptive_search=False)`` in epfml/grad-norm-smooth@9f4ca00
    ``src/methods.py``, which needs the loss at trial points), and the norm is the Euclidean
    one (their ``B = I``)."""
    total = squared_norms[0].to(torch.float64)
    for x in squared_norms[1:]:
        total = total + x.to(device=total.device, dtype=torch.float64)
    return total.sqrt() * damping


def coefficients(gram: Tensor, damping: float | Tensor, *, resolution: float = 0.0) -> Tensor:
    """``C = (m damping I + K)^{-1}`` (float64, m x m) from the Gram matrix ``K``: O(m^3).

    ``gram`` may be a batch ``(..., m, m)`` of Gram matrices (one ``eigh`` for all: one launch
    and, on CUDA, one wait for the device instead of one each), each with its own shift; the
    batched product ``V diag V^T`` may round differently from one matrix's (float64 round-off).

    ``m`` is the window size (its unused slots are zero rows), as in the reference, so the
    Fisher estimate before the window is full is the same sum divided by the full ``m``.

    ``resolution``: the relative accuracy of ``K`` (and of products with ``G``). Eigenvalues of
    ``K`` below ``resolution * max eigenvalue`` are round-off, so their directions are not
    resolved: ``G^T v`` for such a ``v`` is noise, and ``1 / (m damping)`` would amplify it
    without bound when ``||G||^2 >> m damping`` (repeated gradients at 1e15 moved a parameter
    by 11 instead of 1e-18). ``m damping`` is therefore raised to ``resolution * max eigenvalue``,
    which changes nothing where every eigenvalue is resolved (the shift is below round-off
    there). 0 (the default) gives the exact formula.

    ``damping`` may be a float64 tensor, one value per Gram matrix of the batch (shape
    ``gram.shape[:-2]``), left on the device (``gradient_normalized_damping``); the shift is
    then at least ``sqrt(tiny)`` of float64 (1.5e-154), so a zero gradient in an all-zero
    window gives a zero step rather than 0 / 0 (a smaller floor makes ``m C`` overflow to
    ``inf`` and ``inf * 0`` NaN); only a gradient norm below about 1e-150 meets it.
    """
    m = gram.shape[-1]
    w, v = torch.linalg.eigh(gram)
    w = w.clamp_min(0.0)
    if isinstance(damping, Tensor):
        floor = (m * damping).unsqueeze(-1).clamp_min(torch.finfo(torch.float64).tiny ** 0.5)
        shift = torch.maximum(w[..., -1:] * resolution, floor)
    else:
        shift = (w[..., -1:] * resolution).clamp_min(m * damping)
    return (v / (w + shift).unsqueeze(-2)) @ v.mT


def _combine(window: Tensor, c: Tensor) -> Tensor:
    """``G^T c`` in the window's dtype for a float64 ``c``, scaled like ``gram_column``."""
    s = _scale(c)
    return _combine_scaled(window, c / s, s)


def _combine_scaled(window: Tensor, c: Tensor, s: Tensor) -> Tensor:
    """``_combine`` with ``c`` already divided by its scale ``s``."""
    return ((c.to(window.dtype) @ window).double() * s).to(window.dtype)


def ihvp(window: Tensor, coef: Tensor, damping: float, x: Tensor) -> Tensor:
    """``F^{-1} x = (x - G^T C G x) / damping`` for any ``x`` of shape ``(d,)``: O(dm + m^2)."""
    return (x - _combine(window, coef @ gram_column(window, x))) / damping


def ihvp_of_row(window: Tensor, coef: Tensor, slot: int) -> Tensor:
    """``F^{-1} g`` for the gradient ``g`` in row ``slot``, as ``m G^T C e_slot``: O(dm + m^2)."""
    return _combine(window, coef[:, slot] * coef.shape[0])


def ihvp_of_rows(windows: Sequence[Tensor], coefs: Tensor, slots: Sequence[int]) -> list[Tensor]:
    """``ihvp_of_row(windows[j], coefs[j], slots[j])`` for every ``j``, the same values, with
    the m-element work (columns, their scales) done once for the batch ``coefs`` (``(P, m, m)``);
    only the products with the windows (different lengths) go one window at a time."""
    columns = torch.stack([coef[:, slot] for coef, slot in zip(coefs, slots, strict=True)])
    columns = columns * coefs.shape[-1]
    scales = columns.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(columns.dtype).tiny)
    scaled = columns / scales
    return [
        _combine_scaled(window, c, s) for window, c, s in zip(windows, scaled, scales, strict=True)
    ]


def block_gram(grams: Sequence[Tensor]) -> Tensor:
    """``K = sum_i G_i G_i^T`` (float64, ``m x m``, on the first one's device) of a block whose
    window is the column-wise concatenation of windows ``G_i`` with Gram matrices ``grams``:
    O(P m^2) for P pieces, summed in their order (the same order gives the same bits)."""
    total = grams[0].clone()
    for gram in grams[1:]:
        total += gram.to(total.device)
    return total


def ihvp_of_row_split(windows: Sequence[Tensor], coef: Tensor, slot: int) -> list[Tensor]:
    """``F^{-1} g`` for the gradient ``g`` in row ``slot`` of one block whose window is the
    column-wise concatenation of ``windows`` (each ``m x d_i``) and ``coef`` is ``C`` of its
    total Gram matrix (``block_gram``): the pieces ``m G_i^T C e_slot`` of ``ihvp_of_row``, the
    m-element column and its scale computed once: O(m sum_i d_i + m)."""
    scaled, scale = row_coefficients(coef, slot)
    return [
        _combine_scaled(window, scaled.to(window.device), scale.to(window.device))
        for window in windows
    ]


def row_coefficients(coef: Tensor, slot: int) -> tuple[Tensor, Tensor]:
    """``(c / s, s)`` for the coefficients ``c = m C e_slot`` of ``F^{-1} g = G^T c`` (row
    ``slot`` holding ``g``) and ``s = max |c|``: a window in any storage (dense here, sparse or
    low-rank in ``functional.efcp``) combines its rows with ``c / s`` and multiplies ``s`` back,
    so a float32 product of a huge or tiny ``c`` stays finite."""
    column = coef[:, slot] * coef.shape[0]
    scale = _scale(column)
    return column / scale, scale
