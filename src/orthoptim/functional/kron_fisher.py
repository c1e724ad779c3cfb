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


def update_factor_(factor: Tensor, gram: Tensor, *, beta: float, damping: float) -> Tensor:
    """One FISMO factor update, in place; returns ``factor``. ``gram`` is consumed (overwritten).

    ``L = gram + damping tr(factor)/d I``, ``F~ = beta factor + (1 - beta) L``,
    ``factor <- sym(d F~ / tr(F~))`` with ``d`` the factor's size (trace normalised to ``d``). For
    the left factor ``gram = G Q^-1 G^T / n = A A^T / n`` with ``A = G Q^-1/2``; for the right one
    ``gram = G^T P^-1 G / m = B^T B / m`` with ``B = P^-1/2 G``: the caller forms them from the
    roots it whitens with, so no ``Q^-1`` or ``P^-1`` is needed.
    """
    d = factor.shape[0]
    gram = gram.to(factor.dtype)
    gram.diagonal().add_(damping * factor.diagonal().sum() / d)
    blended = factor.mul(beta).add_(gram, alpha=1.0 - beta)
    blended.mul_(d / blended.diagonal().sum())
    return factor.copy_((blended + blended.mT) / 2)
