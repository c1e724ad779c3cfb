"""FISMO: orthogonalized momentum as a trust-region step in a Kronecker-factored Fisher metric."""

from __future__ import annotations

from orthoptim.functional.kron import MatmulDtype
from orthoptim.recipes.options import default
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.fisher import FactorStats, FisherTrustRegion
from orthoptim.transforms.momentum import Momentum, MomentumDtype
from orthoptim.transforms.orthogonalize import ComputeDtype, Orthogonalize
from orthoptim.transforms.scaling import AddWeightDecay, ScaleByShape, ShapeRule


def fismo(
    *,
    momentum: float = 0.95,
    nesterov: bool = default(Momentum, "nesterov"),
    momentum_dtype: MomentumDtype = default(Momentum, "dtype"),
    factor_beta: float = default(FisherTrustRegion, "factor_beta"),
    damping: float = default(FisherTrustRegion, "damping"),
    factor_stats: FactorStats = default(FisherTrustRegion, "factor_stats"),
    root_every: int = default(FisherTrustRegion, "root_every"),
    matmul_dtype: MatmulDtype = default(FisherTrustRegion, "matmul_dtype"),
    coeffs: str = default(Orthogonalize, "coeffs"),
    ns_steps: int = default(Orthogonalize, "ns_steps"),
    compute_dtype: ComputeDtype = default(Orthogonalize, "compute_dtype"),
    shape_scale: ShapeRule = default(ScaleByShape, "rule"),
) -> Chain:
    """FISMO (Xu, Yan, Zhang, 2026): Fisher-Structured Momentum-Orthogonalized, hidden matrices.

    Chain: ``P, Q <-`` EMA of the two-sided Kronecker statistics ``G Q^-1 G^T / n + mu I`` and
    ``G^T P^-1 G / m + mu I``, trace-normalised; ``G~ = P^-1/2 G Q^-1/2``;
    ``M <- beta M + (1-beta) G~``; ``u <- P^-1/2 NS_5(M) Q^-1/2`` (the trust-region step
    ``argmin <G, D>`` s.t. ``||P^1/2 D Q^1/2||_2 <= 1``); ``u <- sqrt(max(1, rows/cols)) u``;
    ``u <- u + lambda theta``. With ``factor_beta=1`` (factors frozen at the identity) it is
    ``muon(nesterov=False)`` (tests/recipes/test_fismo.py). The paper proves
    ``E||grad f||^2 = O(1/sqrt(T))`` in the stochastic nonconvex setting (arXiv abstract; the
    seed scrape's "O(1/T)" lost the square root), with a variance term reduced by mini-batching.

    Differences from the reference: there is no public code; the algorithm is taken from a
    third-party transcription of the paper's Algorithm 1 (junaidaliop zij docs, FISMO page), not
    verified against the paper text. Choices it leaves open are options: ``factor_stats``
    (``"raw"`` is the transcription; the default ``"rms_normalized"`` builds the statistics from
    ``G / rms(G)`` so ``factor_beta`` and ``damping`` do not depend on the gradient scale),
    ``factor_beta`` 0.95 and ``damping`` 0.1 (values not given), the shape scale and Nesterov
    (Muon's Keller scale, no Nesterov as in the transcription), Newton-Schulz in bfloat16 as
    Muon. Conv kernels use their ``(out, in*kh*kw)`` view. Two defaults depart from the
    transcription for speed (``eigh`` was ~57% of a step, float32 products ~31%):
    ``root_every=10`` decomposes the factors every 10 steps, as SOAP's ``precondition_every``
    (the factors' EMAs still update every step; the statistics and whitening use the cached
    roots, the identity before step 10; 1 is the paper's every step), and
    ``matmul_dtype="auto"`` runs the statistics' and (un)whitening products on bfloat16
    operands for float32 factors (factors, EMAs and ``eigh`` in float32; ``"factor"``: the
    factors' dtype, the paper's arithmetic). Tolerance
    (tests/recipes/test_fismo.py): on random_teacher the defaults' final loss after 150 steps is
    within 10% of the paper schedule's or below it, both under 1e-3 (measured 1.65e-4 vs
    2.71e-4); the oracle test pins ``root_every=1, matmul_dtype="factor"``.

    References: Chenrui Xu, Wenjing Yan, Ying-Jun Angela Zhang, "FISMO: Fisher-Structured
    Momentum-Orthogonalized Optimizer", arXiv 2601.21750 (ICML 2026).
    """
    inner = chain(
        Momentum(beta=momentum, kind="ema", nesterov=nesterov, dtype=momentum_dtype),
        Orthogonalize(coeffs=coeffs, ns_steps=ns_steps, compute_dtype=compute_dtype),
    )
    return chain(
        FisherTrustRegion(
            inner=inner,
            factor_beta=factor_beta,
            damping=damping,
            factor_stats=factor_stats,
            root_every=root_every,
            matmul_dtype=matmul_dtype,
        ),
        ScaleByShape(rule=shape_scale),
        AddWeightDecay(),
    )
