"""Inverse-free Kronecker factors moved on structured SPD submanifolds with Riemannian momentum
in local (normal) coordinates (Lin et al., ICML 2023, arXiv 2302.09738).

A layer's Fisher is approximated as ``F ~ (K K^T)^-1 (x) (C C^T)^-1`` (input side ``K``, output
side ``C``). One step in the local coordinates ``m`` at the current factors, for the K-FAC
statistics ``S_K`` (input covariance) and ``S_C`` (output-gradient covariance)::

    H_K = K^T S_K K,  H_C = C^T S_C C
    g_K = 1/2 (tr(H_C)/d_C H_K + damping tr(C^T C)/d_C K^T K - I)
    g_C = 1/2 (tr(H_K)/d_K H_C + damping tr(K^T K)/d_K C^T C - I)
    m_K <- alpha m_K + Pi(g_K),  K <- K (I - beta m_K)     (same for C)

``Pi`` projects onto the structure's Lie algebra (identity for dense factors; the diagonal for
diagonal ones), and ``K (I - beta m)`` is the first-order truncation of ``K expm(-beta m)``: no
inverse, no decomposition, only products, which is what makes it usable in low precision. The
preconditioned gradient is ``C C^T G K K^T``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

Structure = Literal["dense", "diagonal"]
STRUCTURES: tuple[str, ...] = get_args(Structure)
SpdFactorDtype = Literal["auto", "float32", "float64", "bfloat16"]
SPD_FACTOR_DTYPES: tuple[str, ...] = get_args(SpdFactorDtype)


def spd_factor_dtype(p: Tensor, choice: str) -> torch.dtype:
    """``"auto"``: float64 for float64 parameters, float32 otherwise; the other choices name the
    dtype (``"bfloat16"``: the paper's low-precision setting, possible because the update has no
    inverse or decomposition)."""
    if choice == "auto":
        return torch.float64 if p.dtype == torch.float64 else torch.float32
    return getattr(torch, choice)


def _avg_trace(h: Tensor, structure: str) -> Tensor:
    return (h.diagonal() if structure == "dense" else h).mean()


def _inner(f: Tensor, structure: str) -> Tensor:
    """``F^T F`` in the structure's representation (a vector for diagonal factors)."""
    return f.T @ f if structure == "dense" else f * f


def _sandwich(f: Tensor, stat: Tensor, structure: str) -> Tensor:
    """``Pi(F^T S F)`` for a dense statistic ``S``."""
    if structure == "dense":
        h = f.T @ (stat @ f)
        return (h + h.T) * 0.5  # exact symmetry, as the reference's (ng + ng^T) / 2
    return f * f * stat.diagonal()


def local_gradients(
    k: Tensor, c: Tensor, stat_k: Tensor, stat_c: Tensor, damping: float, structure: str
) -> tuple[Tensor, Tensor]:
    """``(Pi(g_K), Pi(g_C))`` of the module docstring, in the factors' dtypes."""
    h_k = _sandwich(k, stat_k.to(k.dtype), structure)
    h_c = _sandwich(c, stat_c.to(c.dtype), structure)
    kk, cc = _inner(k, structure), _inner(c, structure)
    tr_hk, tr_hc = _avg_trace(h_k, structure), _avg_trace(h_c, structure)
    tr_kk, tr_cc = _avg_trace(kk, structure), _avg_trace(cc, structure)
    g_k = h_k.mul_(tr_hc.to(k.dtype)).add_(kk.mul_(damping * tr_cc.to(k.dtype)))
    g_c = h_c.mul_(tr_hk.to(c.dtype)).add_(cc.mul_(damping * tr_kk.to(c.dtype)))
    for g in (g_k, g_c):
        (g.diagonal() if structure == "dense" else g).sub_(1.0)
        g.mul_(0.5)
    return g_k, g_c


def move_(f: Tensor, m: Tensor, g: Tensor, alpha: float, beta: float, structure: str) -> None:
    """``m <- alpha m + g``, ``F <- F - beta F m``, in place."""
    m.mul_(alpha).add_(g)
    f.sub_(f @ m if structure == "dense" else f * m, alpha=beta)


def outer_product(f: Tensor, structure: str) -> Tensor:
    """``F F^T`` (the preconditioner factor) in the structure's representation."""
    return f @ f.T if structure == "dense" else f * f


def precondition(g: Tensor, p_c: Tensor, p_k: Tensor, structure: str) -> Tensor:
    """``P_C G P_K`` for ``P_C = C C^T``, ``P_K = K K^T`` (``outer_product``)."""
    if structure == "dense":
        return p_c @ g @ p_k
    return g * p_c[:, None] * p_k[None, :]
