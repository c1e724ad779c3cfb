"""Muon: orthogonalised momentum for hidden matrices, and its default plan with AdamW."""

from __future__ import annotations

from orthoptim.functional.polar import PreNorm
from orthoptim.recipes.baselines import adamw
from orthoptim.recipes.plan import Plan, Route
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

NON_HIDDEN_ROLES: tuple[str, ...] = ("embedding", "head", "vector")


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


def with_adamw(
    hidden: Chain,
    *,
    name: str,
    adamw_lr_scale: float = 0.015,
    adamw_weight_decay: float = 0.0,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_eps: float = 1e-10,
) -> Plan:
    """Default plan of a matrix optimizer: ``hidden`` for hidden matrices, AdamW for the rest.

    The AdamW route runs at ``adamw_lr_scale`` times the optimizer's lr (0.015 = 3e-4 / 0.02, the
    pairing in KellerJordan/Muon's README) with betas (0.9, 0.95) and no weight decay on
    embeddings, heads, biases and norm gains.
    """
    if not isinstance(hidden, Chain):
        raise TypeError(f"hidden must be a Chain such as recipes.{name}(), got {hidden!r}")
    return Plan(
        (
            Route(name=name, chain=hidden, roles=("hidden",)),
            Route(
                name="adamw",
                chain=adamw(betas=adamw_betas, eps=adamw_eps),
                roles=NON_HIDDEN_ROLES,
                lr_scale=adamw_lr_scale,
                weight_decay=adamw_weight_decay,
            ),
        )
    )


def muon_adamw(
    *,
    hidden: Chain | None = None,
    adamw_lr_scale: float = 0.015,
    adamw_weight_decay: float = 0.0,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_eps: float = 1e-10,
) -> Plan:
    """Muon for hidden matrices, AdamW for embeddings, heads, biases and norm gains.

    ``hidden`` is the hidden route's chain (default ``muon()``); pass ``recipes.muon(...)`` to
    change its conventions. The optimizer's lr and weight decay apply to the Muon route.

    Differences from the reference (KellerJordan/Muon ``MuonWithAuxAdam``): the AdamW lr is a
    ratio of the Muon lr instead of a separate absolute value, and AdamW's default weight decay is
    0 (the reference's README example uses 0.01 for both); AdamW eps 1e-10 as in the reference.

    References: KellerJordan/Muon README and muon.py ``MuonWithAuxAdam``.
    """
    return with_adamw(
        hidden if hidden is not None else muon(),
        name="muon",
        adamw_lr_scale=adamw_lr_scale,
        adamw_weight_decay=adamw_weight_decay,
        adamw_betas=adamw_betas,
        adamw_eps=adamw_eps,
    )
