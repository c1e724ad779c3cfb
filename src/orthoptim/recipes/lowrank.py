"""Low-rank state: GaLore-style Adam in a projected subspace (DCT by default) and FRUGAL."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from orthoptim.functional.projection import BlockOrder, Projection
from orthoptim.recipes.options import default, extends
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.lowrank import LowRankAdam, RefreshMoments, Residual
from orthoptim.transforms.scaling import AddWeightDecay


def lowrank_adamw(
    *,
    projection: Projection = default(LowRankAdam, "projection"),
    block_order: BlockOrder = default(LowRankAdam, "block_order"),
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
    ``projection="blocks"`` (with ``refresh_moments="reset"``) instead gives whole tensors of
    the route Adam in turn, a ``rank_fraction`` of them per period in ``block_order``, and
    leaves the others unchanged (BAdam-like; see ``frugal``).

    Differences from the references (jiaweizzhao/GaLore@1317b5f ``galore_torch/adamw.py`` with
    ``GaLoreProjector`` "std"; ista-daslab-optimizers==1.1.15 ``DCTAdamW``): the rank is a
    fraction of the shorter side, not an absolute count; ``scale`` defaults to 1 (GaLore's README
    uses 0.25 with lr 0.01; the DCT reference has no scale); columns are ranked by the 2-norm of
    ``G b_k`` (the DCT reference's default is the 1-norm) and kept in ascending index order; the
    basis is DCT-II built per shape and cached, not one DCT-3 matrix sized by the first
    parameter; eps 1e-8 added after bias correction, as torch and the DCT reference do (its
    ``m / (eps sqrt(1 - beta2^t) + sqrt(v))`` times ``lr sqrt(1 - beta2^t) / (1 - beta1^t)`` is
    ``m_hat / (sqrt(v_hat) + eps)``; GaLore uses 1e-6 and adds it to ``sqrt(v)`` before bias
    correction); weight decay in the same step (GaLore decays after the update: ``lr^2 lambda u``
    apart per step); moments stay in float32 for 16-bit parameters. ``refresh_moments``
    names the moment convention (GaLore and the DCT reference keep them; ``"rotate"`` is the DCT
    reference's ``rotate_subspace``). At full rank only ``"block"`` is AdamW: Adam is elementwise,
    so in any other basis it is AdamW in that basis's coordinates.
    """
    return chain(
        LowRankAdam(
            projection=projection,
            block_order=block_order,
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
    projection="blocks",
    refresh_moments="reset",
)
def frugal(
    *,
    residual: Residual = "sign_sgd",
    residual_scale: float = default(LowRankAdam, "residual_scale"),
    **options: Any,
) -> Chain:
    """FRUGAL (Zmushko et al., arXiv 2411.07837): Adam on a state-full part of the gradient,
    signSGD on the rest; by default the paper's headline setting, whole tensors in turn.

    Chain (``projection="blocks"``, the authors' C4 pre-training runs,
    ``scripts/benchmark_c4/*.sh``: ``--optimizer frugal --block_order descending --density 0.25
    --update_gap 200 --reset_statistics --inactive_update_rule sign_sgd``): of the route's ``N``
    matrices, ``round(rank_fraction N)`` are state-full for ``update_every`` steps and get
    ``u <- Adam(G)``, the others ``u <- residual_scale * sign(G)``; the state-full set then moves
    on in ``block_order`` (``"descending"``: from the last matrix down) and every moment and
    bias correction restarts. With ``projection`` one of ``"svd"`` (FRUGAL's
    ``GaloreOptimizer``), ``"random"``, ``"block"`` (its RandK over columns) or ``"dct"``, the
    state-full part is a subspace of each matrix instead: every ``update_every`` steps choose
    ``P`` as in ``lowrank_adamw`` and reset Adam's moments and bias correction; ``u <- Adam(G
    P) P^T + residual_scale * sign(G - G P P^T)``. ``residual="sgd"``: without the sign;
    ``"none"``: BAdam (blocks) or GaLore (subspaces). Then ``u <- u + lambda theta``.

    Reference: the FRUGAL authors' code, ``frugal/proj_optimizer_templates.py``
    (``BlockOptimizer``, ``GaloreOptimizer``, ``CoordOptimizer``) and ``frugal/adamw.py`` at
    commit ``c7ebe4c`` ("Init", by the first author, 2024-11-13), as kept in the fork
    ``hungquangbui02022003/FRUGAL`` (ANCHORS.md found no official repository). Differences:
    the blocks are the route's matrices in the optimizer's order (the hidden matrices, in model
    order, as the reference's ``prepare_proj_params`` lists its Linear weights); at least one
    matrix is state-full (the reference's ``round(0.25 N)`` is 0 for ``N <= 2``: pure
    signSGD); ``block_order="random"`` draws from a generator seeded by the period, not the
    global RNG; a state-free matrix's moments are released (empty) as the reference frees
    them, but ``state_dict()`` saves them as full-size zeros (one checkpoint layout whatever
    the period, which DCP's in-place load needs; released again on load), so a save allocates
    AdamW's state size while the dict lives; ``proj_params_lr_scale`` is the optimizer's
    lr itself (1 in all the reference's main experiments); random subspaces come from a
    generator seeded by step and parameter name, so checkpoints resume bit for bit; with ``r =
    n`` the residual is skipped (the reference takes the sign of round-off); eps after bias
    correction, as the reference's AdamW.
    """
    base = lowrank_adamw(**options)
    first = cast(LowRankAdam, base.transforms[0])  # lowrank_adamw's chain starts with it
    adam = dataclasses.replace(first, residual=residual, residual_scale=residual_scale)
    return base.replace("lowrank", adam)


LOWRANK_ADAMW = AdamWRoute(lr_scale=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
"""Both references (GaLore, FRUGAL) run plain AdamW (betas 0.9/0.999, eps 1e-8) at the same lr on
the parameters they do not project: embeddings, the head, norms and biases."""
