"""NorMuon: Muon with neuron-wise normalisation of the orthogonalised update."""

from __future__ import annotations

from orthoptim._checks import check_bool
from orthoptim.functional.polar import PreNorm
from orthoptim.recipes.muon import with_adamw
from orthoptim.recipes.plan import Plan
from orthoptim.transforms.base import Chain, chain
from orthoptim.transforms.momentum import Momentum
from orthoptim.transforms.neuronwise import NormalizeNeurons
from orthoptim.transforms.orthogonalize import ComputeDtype, Orthogonalize
from orthoptim.transforms.scaling import AddWeightDecay, ScaleByShape, ShapeRule

# The reference pairs NorMuon's lr 0.02 with Adam's 3e-4 (NorMuonWithAuxAdam defaults).
NORMUON_ADAMW_LR_SCALE = 0.015


def normuon(
    *,
    momentum: float = 0.95,
    beta2: float = 0.95,
    normalize_neurons: bool = True,
    nesterov: bool = True,
    coeffs: str = "keller_quintic",
    ns_steps: int = 5,
    pre_norm: PreNorm = "frobenius",
    eps: float = 1e-7,
    compute_dtype: ComputeDtype = "bfloat16",
    shape_scale: ShapeRule = "keller",
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
    Newton-Schulz as in ``muon``. The shape scale is the code's Keller rule; the paper's lr
    scaling differs from the code (zichongli5/NorMuon#9), ``shape_scale="moonlight_rms"`` gives
    ``0.2 sqrt(max(rows, cols))`` instead.

    References: Zichong Li et al., "NorMuon: Making Muon more efficient and scalable"
    (arXiv 2510.05491); zichongli5/NorMuon@d45c9a4280d758e2cf0b2b8333765d040e953937 normuon.py.
    """
    check_bool("normalize_neurons", normalize_neurons)
    neurons = NormalizeNeurons(beta2=beta2)  # built (so validated) even when dropped
    return chain(
        Momentum(beta=momentum, kind="ema", nesterov=nesterov),
        Orthogonalize(
            coeffs=coeffs,
            ns_steps=ns_steps,
            pre_norm=pre_norm,
            eps=eps,
            compute_dtype=compute_dtype,
        ),
        *((neurons,) if normalize_neurons else ()),
        ScaleByShape(rule=shape_scale),
        AddWeightDecay(),
    )


def normuon_adamw(
    *,
    hidden: Chain | None = None,
    adamw_lr_scale: float = NORMUON_ADAMW_LR_SCALE,
    adamw_weight_decay: float = 0.0,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_eps: float = 1e-10,
) -> Plan:
    """NorMuon for hidden matrices, AdamW for embeddings, heads, biases and norm gains.

    ``hidden`` is the hidden route's chain (default ``normuon()``). The optimizer's lr and weight
    decay apply to the NorMuon route; AdamW runs at ``adamw_lr_scale`` times that lr.

    Differences from the reference (zichongli5/NorMuon@d45c9a4 ``SingleDeviceNorMuonWithAuxAdam``):
    AdamW's lr is a ratio of NorMuon's (0.015: the reference's 3e-4 / 0.02) instead of an absolute
    value; the roles come from ``orthoptim.routing.classify`` instead of hand-made groups.

    References: zichongli5/NorMuon@d45c9a4280d758e2cf0b2b8333765d040e953937 normuon.py.
    """
    return with_adamw(
        hidden if hidden is not None else normuon(),
        name="normuon",
        adamw_lr_scale=adamw_lr_scale,
        adamw_weight_decay=adamw_weight_decay,
        adamw_betas=adamw_betas,
        adamw_eps=adamw_eps,
    )
