"""DeepZero: zeroth-order training from loss values alone (``transforms.deepzero``)."""

from __future__ import annotations

from orthoptim._checks import check_bool
from orthoptim.recipes.baselines import sgd
from orthoptim.recipes.options import default
from orthoptim.recipes.plan import Plan, estimated
from orthoptim.transforms.deepzero import DeepZeroEstimate, FiniteStep, Pruning


def deepzero(
    *,
    mu: float = default(DeepZeroEstimate, "mu"),
    sparsity: float = default(DeepZeroEstimate, "sparsity"),
    pruning: Pruning = default(DeepZeroEstimate, "pruning"),
    coordinates_per_step: int | None = default(DeepZeroEstimate, "coordinates_per_step"),
    grasp_samples: int = default(DeepZeroEstimate, "grasp_samples"),
    mask_every: int | None = default(DeepZeroEstimate, "mask_every"),
    seed: int = default(DeepZeroEstimate, "seed"),
    finite_step: FiniteStep = default(DeepZeroEstimate, "finite_step"),
    momentum: float = 0.9,
    nesterov: bool = False,
) -> Plan:
    """DeepZero (Chen, Zhang, Jia, Diffenderfer, Liu, Parasyris, Zhang, Zhang, Kailkhura, Liu,
    "DeepZero: Scaling up Zeroth-Order Optimization for Deep Model Training", ICLR 2024, arXiv
    2310.02025): SGD with momentum on a sparse coordinate-wise finite-difference gradient
    (``transforms.deepzero.DeepZeroEstimate``), whose sparsity comes from zeroth-order GraSP
    pruning at the first step. Only forward passes: ``step(closure)`` with a closure that
    returns the loss and calls no backward, ``1 + K`` forward passes per step for ``K`` kept
    coordinates (``(1 - sparsity)`` of the matrices plus every vector entry), plus
    ``2 grasp_samples + 1`` at the first step. Realistic only for small models, as the paper
    says: the race runs it on ``digits`` only (``Spec.race_tasks``).

    Defaults from the reference's training script (``experiments/sparse_gradient_training.py``,
    ``tools/misc.py``): ``mu = 5e-3``, SGD with momentum 0.9 (heavy ball, ``nesterov`` off),
    weight decay 5e-4 and lr 0.1 (the registry's), ZO-GraSP with 192 directions per estimate;
    ``sparsity = 0.9``, the paper's ResNet-20 setting (the script's default 0 is dense CGE).

    Options: ``mu`` the finite-difference step; ``sparsity`` the pruned share of the matrices
    (0: dense CGE); ``pruning`` ``"zo_grasp"`` (layer-wise shares from ZO-GraSP) or
    ``"random"`` (the same share in every matrix); ``coordinates_per_step`` a random subset of
    the kept coordinates per step (``None``: all, the reference); ``mask_every`` re-place each
    matrix's kept entries every N steps (``None``: the first step's mask throughout);
    ``seed`` of the step-seeded draws; ``finite_step`` ``"realized"`` (divide by the step the
    parameter's dtype realises, at least one ulp) or ``"nominal"`` (divide by ``mu``, the
    reference); ``momentum``, ``nesterov`` of the SGD.

    Differences from the reference (OPTML-Group/DeepZero@5cf30b1):

    - Forward passes run one after another through the closure, each over the whole model:
      no feature reuse (recomputing only from the perturbed layer on needs the model's layer
      order, which a closure does not give) and no forward parallelization (batched perturbed
      copies through ``torch.func``: the closure is opaque). The estimate is the same; only the
      time differs.
    - ZO-GraSP scores on the first step's batch, not on a class-balanced 25-per-class batch,
      and draws from a generator seeded by ``seed`` (the reference: the global RNG).
    - The reference re-draws the random layer-wise masks every 5 epochs
      (``--mask-shuffle-interval``); an optimizer does not know the epoch length, so this is
      ``mask_every`` in steps, off by default (the first step's mask throughout).
    - A perturbed coordinate is restored to its saved value, not by subtracting ``mu`` (no
      rounding drift).
    - ``finite_step="realized"`` (default) divides by ``fl(w_i + mu) - w_i``, not by ``mu``:
      the reference's division returns 0 in bfloat16 wherever ``w_i + mu`` rounds back to
      ``w_i``; in float32 the final losses agree within 0.1% (``tests/recipes/
      test_deepzero.py``); ``"nominal"`` is the reference's.
    - BatchNorm layers in training mode update their running statistics at every evaluation
      (the reference's workers evaluate on their own copies of the model, so only the base
      forward updates them): the running statistics then follow the last batch closely.
    - No lr warm-up or cosine schedule inside (the script's): use a torch scheduler.
    - ``coordinates_per_step`` and ``mask_every`` are ours; neither is in the paper's method.

    References: OPTML-Group/DeepZero@5cf30b1 ``algorithm/zoo/gradient_estimate.py`` (``cge``),
    ``algorithm/prune/importance_scores.py`` (``zoo_grasp_importance_score``).
    """
    check_bool("nesterov", nesterov)
    estimator = DeepZeroEstimate(
        mu=mu,
        sparsity=sparsity,
        pruning=pruning,
        coordinates_per_step=coordinates_per_step,
        grasp_samples=grasp_samples,
        mask_every=mask_every,
        seed=seed,
        finite_step=finite_step,
    )
    return estimated(sgd(momentum=momentum, nesterov=nesterov), estimator)
