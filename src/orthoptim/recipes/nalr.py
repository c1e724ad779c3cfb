"""Noise-adaptive layerwise learning rates on top of any orthogonalized-momentum chain."""

from __future__ import annotations

from typing import Any

from orthoptim.functional.robust import DualNorm, NuclearNorm
from orthoptim.recipes.muon import muon
from orthoptim.recipes.options import default, extends
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.noise_adaptive import NoiseReference, ScaleByLayerNoise


def noise_adaptive(
    base: Chain,
    *,
    noise_beta: float = default(ScaleByLayerNoise, "beta"),
    dual_norm: DualNorm = default(ScaleByLayerNoise, "dual_norm"),
    noise_reference: NoiseReference = default(ScaleByLayerNoise, "reference"),
    nuclear_norm: NuclearNorm = default(ScaleByLayerNoise, "nuclear_norm"),
) -> Chain:
    """``base`` followed by a noise-adaptive per-layer lr factor (``ScaleByLayerNoise``).

    ``dual_norm`` must be the dual of ``base``'s LMO norm: ``"nuclear"`` for the spectral-norm
    family (muon, root, fismo, normuon, ...), ``"l1"`` for sign updates, ``"frobenius"`` for
    normalized SGD.
    """
    if not isinstance(base, Chain):
        raise TypeError(f"base must be a Chain such as recipes.muon(), got {base!r}")
    return chain(
        base,
        ScaleByLayerNoise(
            beta=noise_beta,
            dual_norm=dual_norm,
            reference=noise_reference,
            nuclear_norm=nuclear_norm,
        ),
    )


@extends(muon, drop=("pre_norm", "eps"))
def muon_nalr(
    *,
    noise_beta: float = default(noise_adaptive, "noise_beta"),
    noise_reference: NoiseReference = default(noise_adaptive, "noise_reference"),
    nuclear_norm: NuclearNorm = default(noise_adaptive, "nuclear_norm"),
    **options: Any,
) -> Chain:
    """Muon with noise-adaptive layerwise learning rates (Hao et al., 2025; "LANTON").

    Chain: ``muon()`` (EMA momentum, Nesterov, NS_5, Keller scale, decay), then
    ``H_l <- beta H_l + (1-beta) ||G_t - G_{t-1}||_*^2`` (nuclear norm, the dual of Muon's
    spectral-norm LMO; ``nuclear_norm``: ``"gram"`` by default, ``"exact"`` up to rounding)
    and ``u <- min(1, sigma_ref / sigma_l) u`` with ``sigma_l = sqrt(H_l / (1 - beta^k))``
    and ``sigma_ref`` the mean over the layers of the param group. With zero gradient noise
    (or equal noise in every layer) it is ``muon``.

    Differences from the reference: no public code, and the paper's algorithm box could not be
    read here (only its abstract); written from the abstract ("estimates gradient variance in
    the dual norm induced by the chosen LMO on the fly, and uses it to assign time-varying
    noise-adaptive layerwise learning rates within each group"). Named choices: the estimator
    (difference of consecutive gradients, no second minibatch), the EMA ``noise_beta``, the
    nuclear norm from a float32 Gram matrix by default (``nuclear_norm="gram"``: up to 1.5% of
    the norm high for low-rank differences, ``functional.robust.nuclear_norm``; trains as
    ``"exact"`` does within the tolerance of tests/recipes/test_nalr.py, in 0.64x its step
    time: benchmarks/nalr_adamw_speed), the map ``min(1, sigma_ref /
    sigma_l)`` (inverse noise level, capped so no layer exceeds the tuned group lr;
    ``noise_reference`` ``"mean"`` or ``"min"``), and the factor scaling the layer's whole
    step, weight decay included.

    References: Jie Hao, Xiaochuan Gong, Jie Xu, Zhengdao Wang, Mingrui Liu, "Noise-Adaptive
    Layerwise Learning Rates: Accelerating Geometry-Aware Optimization for Deep Neural Network
    Training", arXiv 2510.14009.
    """
    return noise_adaptive(
        muon(**options),
        noise_beta=noise_beta,
        dual_norm="nuclear",
        noise_reference=noise_reference,
        nuclear_norm=nuclear_norm,
    )
