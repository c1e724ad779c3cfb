"""AuON and Hybrid-AuON: momentum bounded by a hyperbolic-cosine RMS scale, without (or with a
single step of) Newton-Schulz."""

from __future__ import annotations

from typing import Any

from orthoptim.recipes.options import default, extends
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms.auon import ScaleByCoshRms
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.momentum import Momentum, MomentumDtype
from orthoptim.transforms.orthogonalize import ComputeDtype, Orthogonalize
from orthoptim.transforms.scaling import AddWeightDecay

# AdamW for the non-hidden roles runs at this fraction of the matrix route's lr: 1e-3 at the
# registry defaults (auon 0.1, hybrid_auon 0.05), which beat 3e-4 on the lm race task
# (benchmarks/auon_default_lr.md).
# The reference (ryyzn9/AuON@bba2e82 README) pairs AuON with a separate Adam (lr 0.008, betas
# (0.8, 0.95)) on p.dim() < 2 parameters by hand; here the roles come from routing.classify.
AUON_ADAMW = AdamWRoute(lr_scale=0.01, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
HYBRID_AUON_ADAMW = AdamWRoute(lr_scale=0.02, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)


def auon(
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    momentum_dtype: MomentumDtype = default(Momentum, "dtype"),
    gamma: float = default(ScaleByCoshRms, "gamma"),
    normalize: bool = default(ScaleByCoshRms, "normalize"),
) -> Chain:
    """AuON (Maity 2025, arXiv 2509.24320): linear-time normalised momentum with a cosh brake.

    Chain: ``m <- beta m + (1-beta) g``; ``u <- g + beta (m - g)`` (Nesterov);
    ``u <- (u / ||u||_F) / r`` with ``r = sqrt(mean(cosh(gamma u / ||u||_F)^2))``;
    ``u <- u + lambda theta``. No matrix is orthogonalised: the cost is linear in the size.

    Step size relative to Muon. ``||u||_F = 1/r``, and ``r`` is within ``sinh(gamma)^2/(2N)``
    of 1 for ``N`` entries (``ScaleByCoshRms``), so AuON moves each matrix by ``lr`` in
    Frobenius norm whatever its shape. Muon's step ``NS(M)`` has all singular values near 1,
    Frobenius norm ``~0.9 sqrt(min(rows, cols))`` (times ``sqrt(max(1, rows/cols))``), so at the
    same lr AuON's Frobenius step is ``~1/(0.9 sqrt(rows))`` of Muon's: 1/7 at 64 rows, 1/14 at
    256, 1/29 at 1024 (measured in ``tests/recipes/test_auon.py``). In spectral norm AuON's step
    is ``sigma_max(M)/||M||_F`` (at most 1: the paper's trust region), which is near Muon's 1 for
    the near-low-rank momenta of real training and ``1/sqrt(min(rows, cols))``-small for
    isotropic noise. Start from about 5x Muon's lr (default 0.1 vs 0.02) and tune; wider
    layers want more. The default lr comes from lr sweeps on the race tasks
    (benchmarks/auon_default_lr.md).

    Differences from the reference (ryyzn9/AuON@bba2e82 ``auon/optimizer.py`` ``AuON``): the
    default ``normalize=True`` divides the Frobenius-normalised momentum, as the paper's §3.1
    equations do; the reference code divides the raw momentum (``normalize=False`` reproduces
    it), which makes its step ``lr ||M||_F / r``, i.e. Nesterov SGD up to the factor ``1/r ~ 1``.
    ``gamma = 1.5`` is the code's (the paper has none, i.e. 1). ``p.grad`` is never modified and
    a zero update needs no host sync (the reference skips it with ``if g_norm == 0``); weight
    decay is decoupled from the same lr, as the reference's ``p *= 1 - lr wd`` (no ``wd_mul``).

    References: Dipan Maity, "AuON: A Linear-time Alternative to Semi-Orthogonal Momentum
    Updates" (arXiv 2509.24320v1); the equations are those of the PDF in the reference repo's
    ``docs/`` ("AuON: A Survey For Linear-time Orthogonal Optimizer", 21 Sep 2025, §3.1-3.2);
    ryyzn9/AuON@bba2e82200825bbf8574462df32130af64a39f42 auon/optimizer.py.
    """
    return chain(
        Momentum(beta=momentum, kind="ema", nesterov=nesterov, dtype=momentum_dtype),
        ScaleByCoshRms(gamma=gamma, normalize=normalize),
        AddWeightDecay(),
    )


@extends(auon, drop=("normalize",))
def hybrid_auon(
    *,
    coeffs: str = default(Orthogonalize, "coeffs"),
    ns_steps: int = 1,
    compute_dtype: ComputeDtype = "float32",
    **options: Any,
) -> Chain:
    """Hybrid-AuON (Maity 2025, arXiv 2509.24320 §3.2): one Newton-Schulz step, then the brake.

    Chain: ``m <- beta m + (1-beta) g``; ``u <- g + beta (m - g)`` (Nesterov);
    ``X = u / (||u||_F + 1e-7)``, ``u <- aX + (bA + cA^2)X`` with ``A = X X^T`` (Keller's
    triple, once); ``u <- u / r`` with ``r = sqrt(mean(cosh(gamma u / ||u||_F)^2)) ~ 1``;
    ``u <- u + lambda theta``.

    Step size: one quintic step maps each normalised singular value ``s`` to
    ``3.4445 s - 4.775 s^3 + 2.0315 s^5``, so the step is about 3.4x AuON's where the momentum's
    energy is spread (small ``s``) and about AuON's where one direction dominates (``s`` near 1):
    between AuON's and Muon's (measured in ``tests/recipes/test_auon.py``). With ``ns_steps=5``
    it is Muon without the shape scale. Default lr 0.05 (2.5x Muon's), from lr sweeps on the
    race tasks (benchmarks/auon_default_lr.md).

    Differences from the reference (ryyzn9/AuON@bba2e82 ``auon/optimizer.py`` ``HybridAuON``):
    ``ns_steps=1`` as the paper says (the code defaults to 5); the brake's ``r`` is the code's
    root-mean-square of ``cosh(gamma X/||X||_F)`` (the paper writes ``mean(cosh(X)^2)`` with no
    root, also ~1); conv kernels go through their ``(out, in*kh*kw)`` view (the code iterates on
    the last two dimensions); matrices only (the code brakes vectors without Newton-Schulz: route
    them to AdamW with ``build("hybrid_auon", model)``); Newton-Schulz uses fused ``addmm``.

    References: Dipan Maity, arXiv 2509.24320v1 §3.2;
    ryyzn9/AuON@bba2e82200825bbf8574462df32130af64a39f42 auon/optimizer.py.
    """
    one_step = Orthogonalize(coeffs=coeffs, ns_steps=ns_steps, compute_dtype=compute_dtype)
    return auon(normalize=False, **options).insert(one_step, after="momentum")
