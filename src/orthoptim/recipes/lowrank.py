"""Low-rank state: GaLore-style Adam in a projected subspace (DCT by default) and FRUGAL."""

from __future__ import annotations

import dataclasses
from typing import Any

from orthoptim.functional.projection import Projection
from orthoptim.recipes.options import default, extends
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.lowrank import LowRankAdam, RefreshMoments, Residual
from orthoptim.transforms.scaling import AddWeightDecay


def lowrank_adamw(
    *,
    projection: Projection = default(LowRankAdam, "projection"),
    rank_fraction: float = default(LowRankAdam, "rank_fraction"),
    update_every: int = default(LowRankAdam, "update_every"),
    scale: float = default(LowRankAdam, "scale"),
    refresh_moments: RefreshMoments = default(LowRankAdam, "refresh_moments"),
    betas: tuple[float, float] = default(LowRankAdam, "betas"),
    eps: float = default(LowRankAdam, "eps"),
) -> Chain:
    """Low-rank AdamW (GaLore, arXiv 2403.03507) with the SVD-free DCT projection (arXiv
    2505.17967) by default, for hidden matrices.

    Chain: every ``update_every`` steps choose ``P`` (``n x r``, ``r = rank_fraction * n``, ``n``
    the shorter side): the ``r`` DCT-II columns ``b_k`` with the largest ``||G b_k||``
    (``"dct"``, only their indices are stored), the top singular vectors (``"svd"``), a random
    orthonormal ``P`` (``"random"``) or ``r`` random coordinates (``"block"``); ``u <- scale *
    Adam(G P) P^T``; ``u <- u + lambda theta``. ``rank_fraction=1, projection="block"`` is AdamW.

    Differences from the references (jiaweizzhao/GaLore@1317b5f ``galore_torch/adamw.py`` with
    ``GaLoreProjector`` "std"; ista-daslab-optimizers==1.1.15 ``DCTAdamW``): the rank is a
    fraction of the shorter side, not an absolute count; ``scale`` defaults to 1 (GaLore's README
    uses 0.25 with lr 0.01; the DCT reference has no scale); columns are ranked by the 2-norm of
    ``G b_k`` (the DCT reference's default is the 1-norm) and kept in ascending index order; the
    basis is DCT-II built per shape and cached, not one DCT-3 matrix sized by the first
    parameter; eps 1e-8 added after bias correction (torch's; GaLore uses 1e-6, both add it
    before); weight decay in the same step (GaLore decays after the update: ``lr^2 lambda u``
    apart per step); moments stay in float32 for 16-bit parameters. ``refresh_moments``
    names the moment convention (GaLore and the DCT reference keep them; ``"rotate"`` is the DCT
    reference's ``rotate_subspace``). At full rank only ``"block"`` is AdamW: Adam is elementwise,
    so in any other basis it is AdamW in that basis's coordinates.
    """
    return chain(
        LowRankAdam(
            projection=projection,
            rank_fraction=rank_fraction,
            update_every=update_every,
            scale=scale,
            refresh_moments=refresh_moments,
            betas=betas,
            eps=eps,
        ),
        AddWeightDecay(),
    )


@extends(
    lowrank_adamw,
    drop=("scale",),
    own_after="update_every",
    projection="svd",
    refresh_moments="reset",
)
def frugal(
    *,
    residual: Residual = "sign_sgd",
    residual_scale: float = default(LowRankAdam, "residual_scale"),
    **options: Any,
) -> Chain:
    """FRUGAL (Zmushko et al., arXiv 2411.07837): Adam in a subspace, signSGD on the rest.

    Chain: every ``update_every`` steps choose ``P`` as in ``lowrank_adamw`` (SVD by default,
    FRUGAL's ``GaloreOptimizer``) and reset Adam's moments and bias correction;
    ``u <- Adam(G P) P^T + residual_scale * sign(G - G P P^T)`` (``residual="sgd"``: without
    the sign; ``"none"``: GaLore); ``u <- u + lambda theta``. The whole update is full rank.

    Differences from the reference (the FRUGAL authors' code, ``frugal/proj_optimizer_templates.py``
    as stored in the public code corpus, no pinned commit: ANCHORS.md found no official repo):
    the blockwise (BAdam-like) choice of whole tensors across the model is not offered, since a
    transform sees one parameter; ``"block"`` is its RandK over columns (``CoordOptimizer``
    ``coord_choice="columns"``); ``proj_params_lr_scale`` is the optimizer's lr itself (the
    reference sets it to 1 in all main experiments); random subspaces come from a generator
    seeded by step and parameter name (the reference uses the global RNG), so checkpoints resume
    bit for bit; with ``r = n`` the residual is skipped (the reference takes the sign of
    round-off); eps after bias correction, as in ``lowrank_adamw``.
    """
    base = lowrank_adamw(**options)
    adam = dataclasses.replace(base.transforms[0], residual=residual, residual_scale=residual_scale)
    return base.replace("lowrank", adam)


LOWRANK_ADAMW = AdamWRoute(lr_scale=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
"""Both references (GaLore, FRUGAL) run plain AdamW (betas 0.9/0.999, eps 1e-8) at the same lr on
the parameters they do not project: embeddings, the head, norms and biases."""
