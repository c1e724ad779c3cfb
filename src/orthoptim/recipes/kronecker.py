"""Kronecker-factored optimizers: Shampoo (with Adam grafting) and SOAP."""

from __future__ import annotations

from orthoptim.functional.kron import FactorDtype, MatmulDtype, RefreshSchedule
from orthoptim.recipes.options import default
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.kronecker import (
    AdamInEigenbasis,
    EpsPlacement,
    FirstStep,
    Grafting,
    ShampooPrecondition,
)
from orthoptim.transforms.scaling import AddWeightDecay


def shampoo(
    *,
    momentum: float = default(ShampooPrecondition, "momentum"),
    factor_beta: float = default(ShampooPrecondition, "factor_beta"),
    eps: float = default(ShampooPrecondition, "eps"),
    root: float = default(ShampooPrecondition, "root"),
    precondition_every: int = default(ShampooPrecondition, "precondition_every"),
    max_precond_dim: int = default(ShampooPrecondition, "max_precond_dim"),
    grafting: Grafting = default(ShampooPrecondition, "grafting"),
    graft_beta2: float = default(ShampooPrecondition, "graft_beta2"),
    graft_eps: float = default(ShampooPrecondition, "graft_eps"),
    factor_dtype: FactorDtype = default(ShampooPrecondition, "factor_dtype"),
    refresh_schedule: RefreshSchedule = default(ShampooPrecondition, "refresh_schedule"),
) -> Chain:
    """Shampoo (Gupta, Koren, Singer, arXiv 1802.09568) as Distributed Shampoo runs it
    (Shi et al., arXiv 2309.06497), for hidden matrices.

    Chain: ``L, R`` EMAs of ``G G^T, G^T G``; ``Gbar`` bias-corrected EMA of ``G``;
    ``u <- (L_hat + eps I)^{-1/4} Gbar (R_hat + eps I)^{-1/4}`` with the roots refreshed every
    ``precondition_every`` steps, rescaled to the norm of Adam's step on ``Gbar`` (grafting);
    ``u <- u + lambda theta``. Defaults: Distributed Shampoo's README example (Adam grafting,
    betas (0.9, 0.999) as ``momentum`` and ``factor_beta``, epsilon 1e-12, lr 1e-3, weight decay
    1e-5) except the frequency.

    Differences from the reference (facebookresearch/optimizers@f606606 DistributedShampoo):
    a dimension over ``max_precond_dim`` is left unpreconditioned instead of being split into
    blocks; a parameter is one block (no ``max_preconditioner_dim`` blocking) and conv kernels
    are their ``(out, in*kh*kw)`` view (the reference: one factor per tensor dimension);
    ``precondition_every`` 10 (reference default 1, README 100), with Adam alone before the first
    refresh as the reference's ``start_preconditioning_step = precondition_frequency``; no trace
    scaling, iterate averaging or distributed options; roots by ``eigh`` (the reference's
    default too). ``factor_beta=1, momentum=0, grafting="none"`` is the original Shampoo
    (pytorch-optimizer==4.1.0 ``Shampoo`` with ``matrix_eps = eps``).
    The roots of the parameters of a group are refreshed at staggered steps
    (``refresh_schedule="staggered"``; the reference: all at the same step, ``"together"``).

    References: facebookresearch/optimizers@f60660661194de26d3ee78bae6d15820ff8e583d
    distributed_shampoo/distributed_shampoo.py; pytorch-optimizer==4.1.0 ``Shampoo``.
    """
    return chain(
        ShampooPrecondition(
            momentum=momentum,
            factor_beta=factor_beta,
            eps=eps,
            root=root,
            precondition_every=precondition_every,
            max_precond_dim=max_precond_dim,
            grafting=grafting,
            graft_beta2=graft_beta2,
            graft_eps=graft_eps,
            factor_dtype=factor_dtype,
            refresh_schedule=refresh_schedule,
        ),
        AddWeightDecay(),
    )


def soap(
    *,
    betas: tuple[float, float] = default(AdamInEigenbasis, "betas"),
    shampoo_beta: float = default(AdamInEigenbasis, "shampoo_beta"),
    eps: float = default(AdamInEigenbasis, "eps"),
    precondition_every: int = default(AdamInEigenbasis, "precondition_every"),
    max_precond_dim: int = default(AdamInEigenbasis, "max_precond_dim"),
    first_step: FirstStep = default(AdamInEigenbasis, "first_step"),
    correct_bias: bool = default(AdamInEigenbasis, "correct_bias"),
    eps_placement: EpsPlacement = default(AdamInEigenbasis, "eps_placement"),
    factor_dtype: FactorDtype = default(AdamInEigenbasis, "factor_dtype"),
    refresh_schedule: RefreshSchedule = default(AdamInEigenbasis, "refresh_schedule"),
    matmul_dtype: MatmulDtype = default(AdamInEigenbasis, "matmul_dtype"),
) -> Chain:
    """SOAP (Vyas et al., arXiv 2409.11321): Adam in the eigenbasis of Shampoo's factors.

    Chain: ``G' = Q_L^T G Q_R``; Adam on ``G'``; ``u <- Q_L D' Q_R^T``; factors ``L, R`` EMAs
    (``shampoo_beta``) of ``G G^T, G^T G`` updated after the step; bases from ``eigh`` at the
    first step, then one power-iteration step plus QR every ``precondition_every`` Adam steps;
    ``u <- u + lambda theta``. Every parameter is handled, as in the reference: vectors, and
    sides longer than ``max_precond_dim``, are not rotated (vectors get exactly Adam), so no plan
    is needed. Conventions (``first_step``, ``correct_bias``, ``eps_placement``) are named options
    of ``AdamInEigenbasis``; the defaults are the reference's (lr 3e-3, weight decay 0.01).

    Differences from the reference (nikhilvyas/SOAP@a1e5535 soap.py): the first step applies
    weight decay (the reference skips the whole step), and parameters without factors (vectors)
    do not skip it (an ordinary first Adam step; the skip only keeps a gradient out of its own
    basis); decay is ``theta - lr (u + lambda theta)``
    instead of being applied after the update (a difference of order ``lr^2 lambda``); conv
    kernels are their ``(out, in*kh*kw)`` view (the reference: one factor per dimension, no
    ``merge_dims``); factors and bases of float32 parameters in float32, float64 ones in float64
    (the reference: always float32); no ``normalize_grads``, ``precondition_1d`` or
    ``data_format``; ``p.grad`` is left alone; the parameters' basis refreshes are spread over
    the period (``refresh_schedule="staggered"``; the reference: all at one step,
    ``"together"``) and the per-step rotations and factor products of float32 factors run in
    bfloat16 (``matmul_dtype="auto"``; the reference: float32, ``"factor"``): final losses
    within 10% of the reference path on the convergence tests (``AdamInEigenbasis``).

    References: nikhilvyas/SOAP@a1e553530fde97d0e6b307d7c82ac6d38b072340 soap.py;
    pytorch-optimizer==4.1.0 ``SOAP`` (same conventions, ``exp_avg`` in the original space).
    """
    return chain(
        AdamInEigenbasis(
            betas=betas,
            shampoo_beta=shampoo_beta,
            eps=eps,
            precondition_every=precondition_every,
            max_precond_dim=max_precond_dim,
            first_step=first_step,
            correct_bias=correct_bias,
            eps_placement=eps_placement,
            factor_dtype=factor_dtype,
            refresh_schedule=refresh_schedule,
            matmul_dtype=matmul_dtype,
        ),
        AddWeightDecay(),
    )


SHAMPOO_ADAMW = AdamWRoute(lr_scale=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
"""AdamW at Shampoo's lr for embeddings, heads, biases and gains: with Adam grafting both routes
take Adam-sized steps, so one lr fits both."""
