"""Three first-order optimizers of issue 21: INNAprop, Optimistic AMSGrad and Gravity."""

from __future__ import annotations

from orthoptim._checks import check_beta
from orthoptim.recipes.options import default
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.gravity import GravityVelocity, InitialVelocity, ScheduleOrigin
from orthoptim.transforms.inertial import DecayPoint, InertialNewton, ScaleByRms
from orthoptim.transforms.optimistic import (
    AmsgradConvention,
    LookaheadMomentum,
    OptimisticAMSGrad,
    Prediction,
    SecondMoment,
)
from orthoptim.transforms.scaling import AddWeightDecay


def innaprop(
    *,
    alpha: float = default(InertialNewton, "alpha"),
    beta: float = default(InertialNewton, "beta"),
    sigma: float = default(ScaleByRms, "beta"),
    eps: float = default(ScaleByRms, "eps"),
    decay_point: DecayPoint = default(InertialNewton, "decay_point"),
) -> Chain:
    """INNAprop (Bolte, Boustany, Pauwels, Purica et al. 2024, "A second-order-like optimizer
    with adaptive gradient scaling for deep learning", arXiv 2410.05871, Algorithm 1): INNA's
    inertial Newton dynamics driven by the RMSprop-scaled gradient.

    Chain: ``d = g / (sqrt(v / (1 - sigma^t)) + eps)`` with ``v <- sigma v + (1 - sigma) g^2``
    (``ScaleByRms``); ``psi <- (1 - lr/beta) psi + lr (1/beta - alpha) theta'``,
    ``u <- beta d + (psi - (1 - alpha beta) theta') / (beta - lr)`` (``InertialNewton``,
    ``psi_0 = (1 - alpha beta) theta_0``, ``theta' = (1 - lr lambda) theta``); ``u <- u +
    lambda theta``. The shell's ``theta - lr u`` is then the reference's step on the decayed
    parameters. Needs ``lr < beta``. Defaults: ``alpha = 0.1, beta = 0.9, sigma = 0.999`` (the
    reference's, and its recommendation for CIFAR-10 and ImageNet with lr 1e-3, wd 1e-2); the
    authors' GPT-2 runs use ``alpha = beta = 2.0, sigma = 0.99`` with lr 6e-4, wd 0.1
    (``GPT-2_scratch/config/train_gpt2_*_innaprop.py``).

    Differences from the reference (innaprop/innaprop@d4bef0c ``innaprop.py``): the decayed
    parameter is computed inside the step instead of written to ``p`` first (equal to
    round-off); ``decay_point="current"`` (not the reference) applies INNA's step to the
    undecayed parameters; ``psi`` and ``v`` of 16-bit parameters in float32; no ``maximize``,
    no complex parameters.

    References: arXiv 2410.05871; innaprop/innaprop@d4bef0c72a10648a5b8efee6d6a9daff02fa4a54
    ``innaprop.py`` ``INNAprop``.
    """
    check_beta("sigma", sigma)  # ScaleByRms would name it beta
    return chain(
        ScaleByRms(beta=sigma, eps=eps),
        InertialNewton(alpha=alpha, beta=beta, decay_point=decay_point),
        AddWeightDecay(),
    )


def optimistic_amsgrad(
    *,
    betas: tuple[float, float] = default(OptimisticAMSGrad, "betas"),
    eps: float = default(OptimisticAMSGrad, "eps"),
    prediction: Prediction = default(OptimisticAMSGrad, "prediction"),
    window: int = default(OptimisticAMSGrad, "window"),
    extrapolation_reg: float = default(OptimisticAMSGrad, "extrapolation_reg"),
    lookahead_momentum: LookaheadMomentum = default(OptimisticAMSGrad, "lookahead_momentum"),
    convention: AmsgradConvention = default(OptimisticAMSGrad, "convention"),
    second_moment: SecondMoment = default(OptimisticAMSGrad, "second_moment"),
) -> Chain:
    """Optimistic AMSGrad (Wang, Li, Karimi, Li, "An Optimistic Acceleration of AMSGrad for
    Nonconvex Optimization", ACML 2021, arXiv 1903.01435, Algorithm 2): AMSGrad plus an
    optimistic step along a guess of the next gradient, then decoupled weight decay.

    Chain: ``OptimisticAMSGrad`` (its docstring gives the update), ``u <- u + lambda theta``.
    ``prediction="extrapolation"`` is the paper's predictor (Algorithm 3: regularized minimal
    polynomial extrapolation of the last ``window + 1`` gradients); ``"last_gradient"`` guesses
    ``g_{t+1} = g_t`` (optimistic mirror descent's usual guess) and keeps ``window + 1``
    gradients fewer per parameter; ``"none"`` is AMSGrad. Defaults: lr 1e-3, ``betas = (0.9,
    0.99)`` and a window of 5, the settings of every experiment of the authors' code.

    Differences from the reference (the paper's Algorithms 2 and 3 as we transcribe them, and
    the experiment code published with it, Hintonthu/optimistic-amsgrad@07fd55e
    ``Optadam_torch.py``): that code's guess is the gradient of an auxiliary copy of the
    network at an extrapolation of the last 5 *iterates*, evaluated on the current batch (a
    second forward and backward per step; not offered: ours extrapolates past gradients and
    needs no closure); its extrapolation's columns are the previous optimistic displacements
    ``w_t - w_{t-1/2}`` (its ``prev_w`` is the same tensor as its ``aux_w``) with an absolute
    ridge of 1e-3, and it guesses zero weights for its first 5 steps; it averages ``(g - m)^2``
    in ``v`` (our ``second_moment="prediction_error"``; default ``"gradient"``, Algorithm 2 as
    we read it); it bias-corrects as Adam with ``eps`` added to ``sqrt(vhat)`` (our
    ``convention="torch"`` adds it after the correction) and adds L2 decay to the gradient.
    Ours also: the extrapolation per tensor, not over the whole model; a relative ridge
    (``extrapolation_reg`` times ``max diag(U^T U)``); a changed lr retracts the previous
    optimistic step at the current lr (the paper's two sequences keep it at the lr it was taken
    with); no projection onto a constraint set; decoupled decay (default 0).

    References: arXiv 1903.01435 (v3, ACML 2021, PMLR 157:422-437);
    Hintonthu/optimistic-amsgrad@07fd55e66adf54b3b84165361674a3e51daabcca ``Optadam_torch.py``;
    Scieur, d'Aspremont, Bach 2016, "Regularized Nonlinear Acceleration" (arXiv 1606.04133).
    """
    return chain(
        OptimisticAMSGrad(
            betas=betas,
            eps=eps,
            prediction=prediction,
            window=window,
            extrapolation_reg=extrapolation_reg,
            lookahead_momentum=lookahead_momentum,
            convention=convention,
            second_moment=second_moment,
        ),
        AddWeightDecay(),
    )


def gravity(
    *,
    alpha: float = default(GravityVelocity, "alpha"),
    beta: float = default(GravityVelocity, "beta"),
    initial_velocity: InitialVelocity = default(GravityVelocity, "initial_velocity"),
    seed: int = default(GravityVelocity, "seed"),
    schedule_origin: ScheduleOrigin = default(GravityVelocity, "schedule_origin"),
) -> Chain:
    """Gravity (Bahrami & Zadeh 2021, "Gravity Optimizer: a Kinematic Approach on Optimization
    in Deep Learning", arXiv 2101.09192, Algorithm 1): a velocity averaged, with the weight
    ``(beta t + 1) / (t + 2)``, from the bounded force ``g / (1 + (g max|g|)^2)``, then
    decoupled weight decay (the paper has none; default 0). Its three hyperparameters: lr,
    ``alpha`` (the initial velocity's spread, ``v_0 ~ N(0, (alpha / lr)^2)``) and ``beta``.

    Defaults: lr 0.1, ``alpha = 0.01``, ``beta = 0.9`` (the authors' implementations).
    ``schedule_origin`` chooses between the authors' two implementations: ``"one"`` (their
    PyTorch port, and pytorch-optimizer, count the first step as ``t = 1``) and ``"zero"``
    (their Keras optimizer, which ran the paper's experiments, counts it as ``t = 0``).

    Differences from the reference (dariush-bahrami/gravity.optimizer@9c12068
    ``implementations/gravity_optimizer_pytorch.py``; pytorch-optimizer==4.1.0 ``Gravity``):
    the initial velocity is drawn from a generator seeded by ``seed`` and the tensor's position,
    not from torch's global one (the same on every rank and run), with the lr of the tensor's
    first step (the authors' port: the lr at construction), and at rest where that lr is 0;
    ``initial_velocity="zero"`` (not the reference) starts at rest; ``max|g|`` of a stacked
    parameter is taken per matrix; the velocity of 16-bit parameters in float32.

    References: arXiv 2101.09192;
    dariush-bahrami/gravity.optimizer@9c12068752097a9336d74c89d841781188c8b9d6
    ``implementations/gravity_optimizer_pytorch.py`` (PyTorch), ``gravity/optimizers.py``
    (Keras); pytorch-optimizer==4.1.0 ``Gravity``.
    """
    return chain(
        GravityVelocity(
            alpha=alpha,
            beta=beta,
            initial_velocity=initial_velocity,
            seed=seed,
            schedule_origin=schedule_origin,
        ),
        AddWeightDecay(),
    )
