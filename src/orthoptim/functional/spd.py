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


def local_gradients(
    k: Tensor, c: Tensor, stat_k: Tensor, stat_c: Tensor, damping: float, structure: str
) -> tuple[Tensor, Tensor]:
    """``(Pi(g_K), Pi(g_C))`` of the module docstring, in the factors' dtypes.

    Dense: ``g_K = 1/2 (K^T (damping tr(C^T C)/d_C K + tr(H_C)/d_C S_K K) - I)``, one product
    for both terms, and the traces as elementwise sums (``tr(K^T S K) = sum(K * S K)``,
    ``tr(K^T K) = sum(K * K)``): 4 d^3 per factor where the formula's products one by one cost
    8 d^3 (the reference's ``faster`` path). Equal to the formula to round-off
    (``tests/recipes/test_spd.py``)."""
    if structure == "dense":
        t_k, t_c = stat_k.to(k.dtype) @ k, stat_c.to(c.dtype) @ c
    else:
        t_k, t_c = stat_k.diagonal().to(k.dtype) * k, stat_c.diagonal().to(c.dtype) * c
    tr_hk, tr_hc = (k * t_k).sum() / k.shape[0], (c * t_c).sum() / c.shape[0]
    tr_kk, tr_cc = (k * k).sum() / k.shape[0], (c * c).sum() / c.shape[0]
    out = []
    for f, t, tr_h, tr_f in ((k, t_k, tr_hc, tr_cc), (c, t_c, tr_hk, tr_kk)):
        # addcmul with the 0-d trace: add_(alpha=tensor) would read it on the host
        mixed = t.mul_(tr_h.to(f.dtype)).addcmul_(f, (damping * tr_f).to(f.dtype))
        if structure == "dense":
            g = f.T @ mixed
            g = g.add_(g.T.clone()).mul_(0.25)  # exact symmetry, as the reference's (ng + ng^T)/2
            g.diagonal().sub_(0.5)
        else:
            g = mixed.mul_(f).sub_(1.0).mul_(0.5)
        out.append(g)
    return out[0], out[1]


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
