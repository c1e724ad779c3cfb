"""Two-sided Kronecker factors of a Fisher metric ``F ~ P (x) Q`` (FISMO) and their powers."""

from __future__ import annotations

import torch
from torch import Tensor


def sym_powers(a: Tensor, powers: tuple[float, ...]) -> tuple[Tensor, ...]:
    """``A^p`` for each ``p`` of ``powers``, of a symmetric positive semi-definite matrix, from
    one ``eigh``.

    Eigenvalues below ``4 eps(dtype) lambda_max`` are lifted to that floor first: below it
    ``eigh`` cannot resolve them, and a negative rounding error must not reach a negative power.
    """
    w, v = torch.linalg.eigh(a)
    floor = 4 * torch.finfo(a.dtype).eps * w[-1].clamp_min(torch.finfo(a.dtype).tiny)
    w = w.clamp_min(floor)
    return tuple((v * w.pow(power)) @ v.mT for power in powers)


def sym_power(a: Tensor, power: float) -> Tensor:
    """``A^power`` of a symmetric positive semi-definite matrix (``sym_powers``)."""
    return sym_powers(a, (power,))[0]


def update_factor_(
    factor: Tensor, gram: Tensor, *, beta: float, damping: float, scale: float | Tensor
) -> Tensor:
    """One FISMO factor update, in place; returns ``factor``.

    ``L = gram / scale + damping tr(factor)/d I``, ``F~ = beta factor + (1 - beta) L``,
    ``factor <- d F~ / tr(F~)`` with ``d`` the factor's size (trace normalised to ``d``). For the
    left factor ``gram = A A^T`` with ``A = G Q^-1/2`` (so ``gram = G Q^-1 G^T``) and
    ``scale = n``; for the right one ``gram = B^T B`` with ``B = P^-1/2 G`` and ``scale = m``:
    the caller forms them from the roots it whitens with, so no ``Q^-1`` or ``P^-1`` is needed.
    ``scale`` may be a 0-d tensor (``n rms(G)^2`` for normalised statistics). ``gram`` may be
    16-bit; the sum is taken in ``factor``'s dtype.

    The trace of ``F~`` is known before it is formed (``tr gram`` is a diagonal sum), so the
    blend and the normalisation are two passes over ``factor``. No symmetrisation: ``gram`` and
    ``factor`` are symmetric up to rounding, and ``eigh`` reads one triangle.
    """
    d = factor.shape[0]
    trace = factor.diagonal().sum()
    stat_trace = gram.diagonal().sum(dtype=factor.dtype) / scale
    normalise = d / (beta * trace + (1.0 - beta) * (stat_trace + damping * trace))
    factor.mul_(beta * normalise).addcmul_(gram, (1.0 - beta) * normalise / scale)
    factor.diagonal().add_((1.0 - beta) * normalise * damping * trace / d)
    return factor
