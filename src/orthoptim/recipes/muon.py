"""Muon: orthogonalised momentum for hidden matrices, and the AdamW route that completes it."""

from __future__ import annotations

from orthoptim.functional.polar import PreNorm
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms import (
    AddWeightDecay,
    Chain,
    Momentum,
    Orthogonalize,
    ScaleByShape,
    chain,
)
from orthoptim.transforms.orthogonalize import ComputeDtype
from orthoptim.transforms.scaling import ShapeRule

MUON_ADAMW = AdamWRoute(lr_scale=0.015, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
"""Muon's AdamW route: 0.015 x Muon's lr (3e-4 / 0.02, the pairing in KellerJordan/Muon's README
and ``MuonWithAuxAdam``), betas (0.9, 0.95), eps 1e-10 as the reference, and no weight decay on
embeddings, heads, biases and norm gains (the README example uses 0.01 for both routes). Muon
Polar Express, FISMO and the noise-adaptive Muon use it too. Racing or migrating from AdamW, pass
your AdamW lr as ``adamw_lr`` instead: the ratio ties the route to the matrix lr."""


def muon(
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    coeffs: str = "keller_quintic",
    ns_steps: int = 5,
    pre_norm: PreNorm = "frobenius",
    eps: float = 1e-7,
    compute_dtype: ComputeDtype = "bfloat16",
    shape_scale: ShapeRule = "keller",
) -> Chain:
    """Muon (Jordan et al., 2024): MomentUm Orthogonalized by Newton-Schulz, for hidden matrices.

    Chain: ``m <- beta m + (1-beta) g``; ``u <- g + beta (m - g)`` (Nesterov) or ``m``;
    ``u <- NS_5(u)``; ``u <- sqrt(max(1, rows/cols)) u``; ``u <- u + lambda theta``.

    Differences from the reference (KellerJordan/Muon muon.py): ``p.grad`` is never modified
    (the reference's Nesterov blend writes into the gradient); conv kernels are scaled by their
    matrix view's ``rows/cols`` (the reference reads the 4-D gradient's last two dimensions); the
    Newton-Schulz step uses fused ``addmm`` like torch.optim.Muon, which rounds differently from
    the reference's separate products in bfloat16. ``pre_norm="frobenius_clamp"`` reproduces
    torch.optim.Muon's ``X / max(||X||, eps)``; torch's default ``lr=1e-3, weight_decay=0.1``
    are not ours (``lr=0.02, weight_decay=0`` from the reference).

    References: Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024);
    KellerJordan/Muon muon.py; torch.optim.Muon (torch==2.13.0).
    """
    return chain(
        Momentum(beta=momentum, kind="ema", nesterov=nesterov),
        Orthogonalize(
            coeffs=coeffs,
            ns_steps=ns_steps,
            pre_norm=pre_norm,
            eps=eps,
            compute_dtype=compute_dtype,
        ),
        ScaleByShape(rule=shape_scale),
        AddWeightDecay(),
    )
