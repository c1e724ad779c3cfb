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

    Chain: ``M`` bias-corrected EMA of ``g``; on update steps (every step by default) one
    Lie-group step of ``d`` and of ``U`` or ``V`` (drawn with probability 1/2) towards
    ``P E[h h^T] P = I`` (``h = g`` by default) with a Gaussian probe; ``u <- Q^T Q M``
    clipped to rms ``clip_rms``; ``u <- u + lambda theta``. The options
    (``PSGDLRAPrecondition``) and their sources: ``rank`` (psgd_torch's
    ``rank_of_approximation``, 10); ``precond_lr`` (``lr_preconditioner``, 0.1 with the
    ``"2nd"`` normaliser) and ``step_normalizer`` (``step_normalizer``: ``"2nd"``, the
    reference's default, or ``"1st"``); ``precond_init_scale`` (``preconditioner_init_scale``,
    ``None``: set from the first gradient); ``curvature`` (``"whitening"``, the reference's
    ``preconditioner_type="whitening"``; ``"finite_difference"``, the paper's BFGS-like pair of
    parameter and gradient differences; ``"hvp"``, the reference's default
    ``preconditioner_type="Newton"`` with exact Hessian-vector products: ``step(closure)``,
    the closure calling ``loss.backward(create_graph=True)``, as ``psgd_kron``'s usage
    example shows; ``blocks="parameter"`` only); ``whiten``, ``update_rule``,
    ``update_order``, ``prob_*`` and ``balance_prob`` as ``psgd_kron`` (the defaults:
    update at every step, the reference's ``preconditioner_update_probability=1``; balance
    probability 0.01, the reference's fixed one); ``blocks`` (below). lr 1e-2 (the
    registry's), the reference's ``lr_params``.

    Blocks: ``"parameter"`` (default), a preconditioner per parameter; ``"model"``, the
    reference's one preconditioner over the flattened parameters of the route (the matrices;
    the whole-model plan sends embeddings, heads and vectors to AdamW), computed once per step
    over all of them. ``"model"`` runs in one process only (``ValueError`` under DDP or FSDP2)
    and needs a gradient for every parameter at every step. Why ``"parameter"`` is the default:
    it runs under a distributed step (each block on its owner rank), and it trains like the
    model block (tests/recipes/test_psgd_lra.py, teacher-student problems: the default's loss
    within the tolerance stated there); it also spends ``rank`` directions on each matrix
    rather than 10 over the whole model. ``build("psgd_lra", model, blocks="model",
    momentum=0.0, clip_rms=1e6)`` is the reference's configuration (for the route's matrices).

    Memory: ``(2 rank + 2)`` elements per parameter element in ``factor_dtype`` (``U``,
    ``V``, ``d``, the momentum): 88 bytes per float32 element at rank 10 (psgd_kron: the
    momentum plus ``m^2 + n^2`` per matrix); finite differences add two more.

    Differences from the reference (psgd_torch==0.6.1 ``psgd.py`` ``LRA``,
    ``preconditioner_type="whitening"``): a preconditioner per parameter by default (the
    reference: one over every parameter it is given; ``blocks="model"``); the matrices only in
    the whole-model plan (AdamW for embeddings, heads and vectors); momentum 0.9 and
    bias-corrected (the reference: 0 by default, and not bias-corrected); the step clipped to
    rms ``clip_rms`` 1.1 per block over ``rms + 1e-6`` (the reference: no clip by default, a
    norm clip ``grad_clip_max_norm`` over ``norm + tiny``); the step is a chain step (weight
    decay, the lr schedule, the shell's non-finite guard), not the reference's closure step;
    ``U``, ``V``, the probes and the balance and U-or-V decisions come from generators and
    draws seeded by the step and ``seed``, not the global RNGs, so runs resume exactly; the
    reference's ``U, V`` scale ``(N (r + 10))^{-1/2}`` is a float32 value, ours in the
    factors' dtype; with ``curvature="hvp"`` the probe covers the route's matrices (the
    reference: every parameter it holds), and each parameter's ``H v`` sums over all probed
    parameters while its preconditioner fits only its own part; the reference's
    finite-difference Newton type (a perturbed second closure evaluation) is replaced by the
    paper's secant pairs of consecutive steps.

    References: Xi-Lin Li, "Preconditioned Stochastic Gradient Descent" (arXiv 1512.04202);
    Omead Pooladzandi, Xi-Lin Li, "Curvature-Informed SGD via General Purpose Lie-Group
    Preconditioners" (arXiv 2402.11858); psgd_torch==0.6.1 (PyPI) ``psgd.py``
    (``update_precond_UVd_math_``, ``precond_grad_UVd_math``, ``LRA``).
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
