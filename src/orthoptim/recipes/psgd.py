"""PSGD Kron: PSGD with the Kronecker-factored (affine Lie group) preconditioner."""

from __future__ import annotations

from orthoptim.functional.kron import FactorDtype
from orthoptim.functional.psgd import MemorySaveMode
from orthoptim.recipes.options import default
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.psgd import (
    Curvature,
    Geometry,
    PSGDKronPrecondition,
    UpdateOrder,
    UpdateRule,
    WhitenInput,
)
from orthoptim.transforms.scaling import AddWeightDecay

_P = PSGDKronPrecondition


def psgd_kron(
    *,
    momentum: float = default(_P, "momentum"),
    precond_lr: float = default(_P, "precond_lr"),
    curvature: Curvature = default(_P, "curvature"),
    geometry: Geometry = default(_P, "geometry"),
    lipschitz_beta: float = default(_P, "lipschitz_beta"),
    damping: float = default(_P, "damping"),
    whiten: WhitenInput = default(_P, "whiten"),
    update_rule: UpdateRule = default(_P, "update_rule"),
    update_order: UpdateOrder = default(_P, "update_order"),
    prob_max: float = default(_P, "prob_max"),
    prob_min: float = default(_P, "prob_min"),
    prob_decay: float = default(_P, "prob_decay"),
    prob_flat_start: int = default(_P, "prob_flat_start"),
    balance_prob: float = default(_P, "balance_prob"),
    max_size_triangular: int = default(_P, "max_size_triangular"),
    memory_save_mode: MemorySaveMode = default(_P, "memory_save_mode"),
    clip_rms: float = default(_P, "clip_rms"),
    seed: int = default(_P, "seed"),
    factor_dtype: FactorDtype = default(_P, "factor_dtype"),
) -> Chain:
    """PSGD Kron (Li, arXiv 1512.04202; Pooladzandi and Li, arXiv 2402.11858) for hidden
    matrices: gradient whitening with a Kronecker-factored preconditioner fitted on the group
    of (upper triangular or diagonal) factors, as the Kron references run it.

    Chain: ``M`` bias-corrected EMA of ``G``; on update steps one EQ step of ``Q_L, Q_R``
    towards ``P E[M M^T] P = I`` with a Gaussian probe; ``u <- Q_L^T Q_L M Q_R^T Q_R`` clipped
    to rms ``clip_rms``; ``u <- u + lambda theta``. The options (``PSGDKronPrecondition``) and
    their sources: ``curvature`` (``"whitening"``, the Kron references' default;
    ``"finite_difference"``, the paper's BFGS-like pair of parameter and gradient differences;
    ``"hvp"``, the paper's Newton pair of a probe and its Hessian-vector product, psgd_torch's
    ``preconditioner_type="Newton"``, which needs ``step(closure)``, below); ``update_rule``
    and ``prob_*`` (the references' update probability schedule; ``"counter"`` kron_torch /
    pytorch-optimizer, ``"bernoulli"`` psgd_torch);
    ``max_size_triangular`` and ``memory_save_mode`` (triangular or diagonal factor per side,
    kron_torch's options); ``update_order`` (psgd_torch's ``update_preconditioner_first``);
    ``whiten`` (pytorch-optimizer's ``momentum_into_precondition_update``, psgd_torch's
    ``whiten_grad``); ``geometry`` (psgd_torch's ``dQ``: ``"EQ"``, triangular factors, the Kron
    references'; ``"Q0.5EQ1.5"``, the author's current default, with ``lipschitz_beta``
    (``betaL``) and ``damping``, whitening only). Defaults: pytorch-optimizer==4.1.0 ``Kron``
    (lr 1e-3, momentum 0.9, preconditioner lr 0.1, balance probability 0.01, max size 8192, rms
    clip 1.1).

    ``curvature="hvp"`` steps with a closure that builds the gradient's graph; the optimizer
    then takes ``H v`` by one double backward on the update steps (none on the others) and
    frees the graph (``orthoptim.hvp``)::

        opt = orthoptim.build("psgd_kron", model, curvature="hvp", lr=0.01)

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward(create_graph=True)
            return loss

        opt.step(closure)

    ``step()`` without a closure, or a closure that calls ``backward()`` without
    ``create_graph=True``, raises ``ValueError`` before anything changes; a non-finite ``H v``
    is a non-finite gradient (``nonfinite``); a distributed step refuses it at construction.
    The Newton preconditioner approximates ``|H|^{-1}``, so its steps are Newton-sized: the
    teacher-student tests train at lr 0.01 to 0.1 (psgd_torch's Newton default: 0.01, ten
    times its whitening one).

    Differences from the reference (pytorch-optimizer==4.1.0 ``Kron``, itself kron_torch;
    psgd_torch's ``KronWhiten`` at lixilinx/psgd_torch@a8616f1 as the author's):
    conv kernels are preconditioned as their ``(out, in*kh*kw)`` matrix view (two factors, the
    references: one per dimension); vectors go to the AdamW route instead of a diagonal
    preconditioner; the probes and the balance decision come from generators seeded by the step,
    not the global RNGs, so runs resume exactly (and every parameter of a step gets the same
    probe, the reference: independent draws); the update decision
    is per parameter from its step (the reference's counter is global); the spectral-norm lower
    bound starts from the largest column only (the reference picks row or column, equal for the
    symmetric matrices it is applied to); the author's other current defaults (gradient rather
    than momentum whitening, clipping at rms 2 and amplitude 10, an init scale from the first
    gradients, update probability 1) are not the defaults here, and ``geometry="Q0.5EQ1.5"``
    normalises its rotation and Gram terms with the deterministic two-step lower bound of
    ``functional.psgd.spectral_norm_lower_bound`` (psgd_torch: a randomised 32-vector subspace
    iteration); its QEP, QEQ, QUAD and PRO4P geometries are not offered. ``curvature="hvp"``
    (psgd_torch==0.6.1 ``Kron``, ``preconditioner_type="Newton"``): the probe ``v`` is drawn for
    the ``psgd_kron`` route's parameters only, so ``H v`` leaves out the AdamW route's columns
    of the Hessian (the reference probes every parameter it holds); its finite-difference
    ``H v`` (``exact_hessian_vector_product=False``) is not offered (``"finite_difference"``
    is the paper's secant pair instead).

    References: pytorch-optimizer==4.1.0 ``pytorch_optimizer/optimizer/psgd.py`` ``Kron``;
    lixilinx/psgd_torch@a8616f1d802136159793419ed382cd2ba8fb91dd psgd.py
    (``update_precond_kron_eq``, ``KronWhiten``); psgd_torch==0.6.1 (PyPI) ``psgd.py``
    (``Kron``, ``update_precond_kron_math_``) for ``curvature="hvp"``.
    """
    return chain(
        PSGDKronPrecondition(
            momentum=momentum,
            precond_lr=precond_lr,
            curvature=curvature,
            geometry=geometry,
            lipschitz_beta=lipschitz_beta,
            damping=damping,
            whiten=whiten,
            update_rule=update_rule,
            update_order=update_order,
            prob_max=prob_max,
            prob_min=prob_min,
            prob_decay=prob_decay,
            prob_flat_start=prob_flat_start,
            balance_prob=balance_prob,
            max_size_triangular=max_size_triangular,
            memory_save_mode=memory_save_mode,
            clip_rms=clip_rms,
            seed=seed,
            factor_dtype=factor_dtype,
        ),
        AddWeightDecay(),
    )


PSGD_ADAMW = AdamWRoute(lr_scale=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
"""AdamW at PSGD's lr for embeddings, heads, biases and gains: the rms-clipped whitened step is
Adam-sized (rms about 1), so one lr fits both."""
