"""NorMuon: Muon with neuron-wise normalisation of the orthogonalised update."""

from __future__ import annotations

from typing import Any

from orthoptim._checks import check_bool
from orthoptim.recipes.muon import muon
from orthoptim.recipes.options import default, extends
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms.chain import Chain
from orthoptim.transforms.neuronwise import NormalizeNeurons

NORMUON_ADAMW = AdamWRoute(lr_scale=0.015, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
"""The reference pairs NorMuon's lr 0.02 with Adam's 3e-4 (zichongli5/NorMuon@d45c9a4
``SingleDeviceNorMuonWithAuxAdam`` defaults)."""


@extends(muon, own_after="momentum")
def normuon(
    *,
    beta2: float = default(NormalizeNeurons, "beta2"),
    normalize_neurons: bool = True,
    **options: Any,
) -> Chain:
    """NorMuon (Li et al. 2025, arXiv 2510.05491): Muon plus a per-neuron second moment.

    Chain: ``m <- beta m + (1-beta) g``; ``u <- g + beta (m - g)`` (Nesterov); ``u <- NS_5(u)``;
    ``v_i <- beta2 v_i + (1-beta2) mean_j u_ij^2`` per row (output neuron),
    ``u_ij <- u_ij / (sqrt(v_i) + 1e-10)``, rescaled to the Frobenius norm ``u`` had before;
    ``u <- sqrt(max(1, rows/cols)) u``; ``u <- u + lambda theta``. Because of the rescale, the
    step has Muon's Frobenius norm, so Muon's lr carries over (reference default 0.02).
    ``normalize_neurons=False`` drops the neuron step, leaving exactly ``muon()``.

    Differences from the reference (zichongli5/NorMuon@d45c9a4 ``normuon.py``,
    ``normuon_update``): ``p.grad`` is never modified (the reference's Nesterov blend writes it);
    a conv kernel's "neurons" are its output channels, the rows of its ``(out, in*kh*kw)`` view
    (the reference reshapes the orthogonalised update back to 4-D first, so its row statistics
    run over the last kernel dimension); the normalisation runs in the parameter's dtype (float32
    for 16-bit ones, ``v_row`` kept in float32) after casting the bfloat16 Newton-Schulz output
    back, as the reference's PR #10 does (at d45c9a4 float32 parameters crash,
    zichongli5/NorMuon#7); a parameter without a gradient is skipped (the reference steps it
    with a zero gradient, so its momentum keeps moving it, without decay); fused ``addmm`` in
    Newton-Schulz as in ``muon``. The shape scale is the code's Keller rule (the default,
    which the authors keep in their code and their later ports, microsoft/dion#19); the
    paper's step size, ``eta_hat = 0.2 eta sqrt(m n) / ||O||_F`` on the normalised update
    (Algorithm 1 line 10; zichongli5/NorMuon issues #6, #9), is ``shape_scale="constant_rms"``:
    every step then has RMS ``0.2 eta``, which makes the re-norm above moot;
    ``"moonlight_rms"`` gives Moonlight's ``0.2 sqrt(max(rows, cols))``.

    References: Zichong Li et al., "NorMuon: Making Muon more efficient and scalable"
    (arXiv 2510.05491); zichongli5/NorMuon@d45c9a4280d758e2cf0b2b8333765d040e953937 normuon.py.
    """
    check_bool("normalize_neurons", normalize_neurons)
    neurons = NormalizeNeurons(beta2=beta2)  # built (so validated) even when dropped
    base = muon(**options)
    return base.insert(neurons, after="orthogonalize") if normalize_neurons else base
