"""ROOT: robust orthogonalized momentum (shape-keyed Newton-Schulz, proximal outlier clipping)."""

from __future__ import annotations

from orthoptim.recipes.options import default
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.momentum import Momentum, MomentumDtype
from orthoptim.transforms.orthogonalize import ComputeDtype, Orthogonalize
from orthoptim.transforms.proximal import ClipEstimate, ClipOutliers
from orthoptim.transforms.scaling import AddWeightDecay, ScaleByShape, ShapeRule


def root(
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    momentum_dtype: MomentumDtype = default(Momentum, "dtype"),
    clip_quantile: float = default(ClipOutliers, "quantile"),
    clip_estimate: ClipEstimate = default(ClipOutliers, "estimate"),
    coeffs: str = "root_shape_map",
    ns_steps: int = default(Orthogonalize, "ns_steps"),
    compute_dtype: ComputeDtype = default(Orthogonalize, "compute_dtype"),
    shape_scale: ShapeRule = "moonlight_rms",
) -> Chain:
    """ROOT (He et al., 2025): Robust Orthogonalized OpTimizer, for hidden matrices.

    Chain (the reference's order): ``M <- mu M + g``; ``u <- g + mu M`` (Nesterov) or ``M``;
    ``u <- u - T_tau(u) = clip(u, +-tau)``, ``tau = Q_0.9(|u|)`` (proximal outlier suppression);
    ``u <- AdaNewton_5(u)``, coefficients keyed by shape (``root_shape_map``: ROOT's four
    2048-class shapes, Keller's triple for every other shape); ``u <- 0.2 sqrt(max(A, B)) u``;
    ``u <- u + lambda theta``. ``clip_quantile=1.0, coeffs="keller_quintic"`` is Moonlight's Muon.

    Differences from the reference (huawei-noah/noah-research ROOT/examples/example_train.py):
    ``p.grad`` is never modified; the clip is ``clamp(u, -tau, tau)``, not ``u - sign(u)
    relu(|u| - tau)`` (equal up to one rounding), its quantile taken in the update's dtype when
    float32/64 (the reference: float32); ``clip_estimate="sampled"`` estimates it from 2^16
    sampled entries instead of all (``ClipOutliers.estimate``, within the exact 0.9 +- 0.0105
    quantiles with probability 1 - 1e-6; off by default). Newton-Schulz runs in
    ``compute_dtype``, by default bfloat16 as Muon's (the reference's script: float32;
    ``compute_dtype="float32"`` restores it) with fused ``addmm``. Why bfloat16 is the default:
    on the teacher-student convergence tests (``tests/recipes/test_root.py``) its final loss is
    within 1% of float32's at the default lr (measured 1e-4 relative, seeds 0-4) and its mean
    loss over the last 20 of 200 steps within 5% at lr 0.02 (measured geometric-mean ratio
    1.005 over 8 seeds, both signs); the table's triples stay inside their stated bands in
    bfloat16 (at 2048 x 2048/3072/8192/16384 the largest singular value after 5 steps moved by
    at most 0.006 from float32's); and float32 products cost ~5x bfloat16's on an AMX CPU,
    which made ROOT's step 3.6x Muon's on the speed benchmark's default matrices. Other shapes
    fall back to Keller's triple without the reference's per-step warning; conv kernels use
    their ``(out, in*kh*kw)`` view (the reference asserts 2-D). The paper's box thresholds
    ``M`` at a fixed epsilon, the code the Nesterov blend at a per-step quantile, as here
    (``nesterov=False`` gives the box's order). The default plan's AdamW runs at the same lr as
    the reference's, without decay on embeddings, heads and gains (the reference decays them).
    Keep ``ns_steps`` at 5 with ``root_shape_map``: its 2048x2048 triple diverges beyond
    (``SHAPE_KEYED_PRESETS``).

    References: He, Han, Zhou, Chen, Liu, Chen, Wang, "ROOT: Robust Orthogonalized Optimizer for
    Neural Network Training", arXiv 2511.20626; huawei-noah/noah-research@aa0f80c ROOT/.
    """
    return chain(
        Momentum(beta=momentum, kind="sum", nesterov=nesterov, dtype=momentum_dtype),
        ClipOutliers(quantile=clip_quantile, estimate=clip_estimate),
        Orthogonalize(coeffs=coeffs, ns_steps=ns_steps, compute_dtype=compute_dtype),
        ScaleByShape(rule=shape_scale),
        AddWeightDecay(),
    )


ROOT_ADAMW = AdamWRoute(lr_scale=1.0, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
"""AdamW at ROOT's lr (Moonlight's pairing, as the ROOT reference), betas (0.9, 0.95), eps 1e-8,
no decay for embeddings, heads and gains."""
