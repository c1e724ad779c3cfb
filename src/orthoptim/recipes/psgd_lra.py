"""PSGD LRA: PSGD with the low-rank approximation preconditioner ``Q = (I + U V^T) diag(d)``."""

from __future__ import annotations

from orthoptim.functional.kron import FactorDtype
from orthoptim.functional.psgd import UpdateRule
from orthoptim.recipes.options import default
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.mfac import Blocks
from orthoptim.transforms.psgd import Curvature, UpdateOrder, WhitenInput
from orthoptim.transforms.psgd_lra import PSGDLRAPrecondition, StepNormalizer
from orthoptim.transforms.scaling import AddWeightDecay

_P = PSGDLRAPrecondition


def psgd_lra(
    *,
    rank: int = default(_P, "rank"),
    blocks: Blocks = default(_P, "blocks"),
    momentum: float = default(_P, "momentum"),
    precond_lr: float = default(_P, "precond_lr"),
    step_normalizer: StepNormalizer = default(_P, "step_normalizer"),
    curvature: Curvature = default(_P, "curvature"),
    whiten: WhitenInput = default(_P, "whiten"),
    update_rule: UpdateRule = default(_P, "update_rule"),
    update_order: UpdateOrder = default(_P, "update_order"),
    prob_max: float = default(_P, "prob_max"),
    prob_min: float = default(_P, "prob_min"),
    prob_decay: float = default(_P, "prob_decay"),
    prob_flat_start: int = default(_P, "prob_flat_start"),
    balance_prob: float = default(_P, "balance_prob"),
    precond_init_scale: float | None = default(_P, "precond_init_scale"),
    clip_rms: float = default(_P, "clip_rms"),
    seed: int = default(_P, "seed"),
    factor_dtype: FactorDtype = default(_P, "factor_dtype"),
) -> Chain:
    """PSGD LRA (Li, arXiv 1512.04202; Pooladzandi and Li, arXiv 2402.11858, "Curvature-
    Informed SGD via General Purpose Lie-Group Preconditioners"): gradient whitening with the
    low-rank approximation preconditioner ``Q = (I + U V^T) diag(d)``, ``P = Q^T Q``.

    DRAFT
    """
    return chain(
        PSGDLRAPrecondition(
            rank=rank,
            blocks=blocks,
            momentum=momentum,
            precond_lr=precond_lr,
            step_normalizer=step_normalizer,
            curvature=curvature,
            whiten=whiten,
            update_rule=update_rule,
            update_order=update_order,
            prob_max=prob_max,
            prob_min=prob_min,
            prob_decay=prob_decay,
            prob_flat_start=prob_flat_start,
            balance_prob=balance_prob,
            precond_init_scale=precond_init_scale,
            clip_rms=clip_rms,
            seed=seed,
            factor_dtype=factor_dtype,
        ),
        AddWeightDecay(),
    )
