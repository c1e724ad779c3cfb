"""Saddle-free Newton: ``|H|``-preconditioned steps in a Krylov subspace (a closure)."""

from __future__ import annotations

from orthoptim.functional.saddle_free import Outside, Reorthogonalize
from orthoptim.recipes.baselines import sgd
from orthoptim.recipes.options import default
from orthoptim.recipes.plan import Plan, estimated
from orthoptim.transforms.saddle_free import DampingRule, SaddleFreeNewton, Start


def saddle_free_newton(
    *,
    k: int = default(SaddleFreeNewton, "k"),
    damping_rule: DampingRule = default(SaddleFreeNewton, "damping_rule"),
    dampings: tuple[float, ...] = default(SaddleFreeNewton, "dampings"),
    damping: float = default(SaddleFreeNewton, "damping"),
    start: Start = default(SaddleFreeNewton, "start"),
    outside: Outside = default(SaddleFreeNewton, "outside"),
    reorthogonalize: Reorthogonalize = default(SaddleFreeNewton, "reorthogonalize"),
    seed: int = default(SaddleFreeNewton, "seed"),
) -> Plan:
    """Saddle-free Newton (Dauphin, Pascanu, Gulcehre, Cho, Ganguli, Bengio, NeurIPS 2014,
    "Identifying and attacking the saddle point problem in high-dimensional non-convex
    optimization", arXiv 1406.2572; workshop version arXiv 1405.4604), the paper's Algorithm 1:
    ``theta <- theta - V (|T| + lambda I)^{-1} V^T g`` over ``k`` Lanczos vectors ``V`` of the
    Hessian started at the gradient, ``T = V^T H V`` and ``|T| = Q |Lambda| Q^T``; ``lambda``
    by a line search on the loss (``transforms.saddle_free.SaddleFreeNewton``,
    ``functional.saddle_free``). Newton's ``H^{-1}`` is attracted by saddles along negative
    curvature; ``|H|^{-1}`` keeps its rescaling and descends everywhere.

    A plan-level gradient estimator (``recipes.plan.estimated``) over SGD without momentum: the
    estimator's ``d`` is written to ``.grad`` and the step is ``theta <- theta - lr d``, lr 1
    (the registry's default: the paper scales the step by the damping's line search alone).
    One Krylov space spans every parameter (the whole model). ``step(closure)`` with a closure
    that zeroes the gradients, computes the loss and calls ``loss.backward(create_graph=True)``.

    Cost per step (``k = 20``, 5 dampings): 1 + 5 forward and 1 + 5 backward passes with
    ``create_graph=True`` (the closure, then one per damping of the line search; ``"fixed"``:
    1 and 1), and ``k`` Hessian-vector products (each a double backward through the closure's
    graph, about two backward passes); memory O(n k) for the Lanczos basis (``k`` copies of
    the model's parameters, transient) and no state kept between steps (0 bytes per
    parameter). For models where that is affordable: small networks, or ``k`` small. Measured
    (process CPU time, 1 thread, a 64-256-256-10 tanh MLP of 85k parameters, batch 128, medians
    of 6 steps side by side): 77 ms per step against 4.5 ms for a muon training step (17x;
    ``damping_rule="fixed"``: 65 ms; ``k=5`` fixed: 16 ms); the Hessian-vector products take
    about 46% of it, the re-orthogonalisation 18%, the line search's closures 10%. On the
    race's lm model (TinyGPT) one 200-step run took 311 s against AdamW's 3 s, so the race runs
    it on ``digits``, ``quadratic`` and ``matrix_sensing`` only (``Spec.race_tasks``).

    Differences from the reference (from the paper: oracle only; no authors' code was found):

    - One step per Krylov space: the paper's Algorithm 1 takes ``m`` inner steps in each
      space (re-evaluating the projected gradient); here the space is rebuilt every step.
    - The line search tries the fixed candidates ``dampings`` (the paper does not list its
      grid) and keeps the lowest loss; it evaluates the loss at ``theta - lr d``, which is
      the step taken where the routes are the recipe's plain SGD.
    - ``reorthogonalize="full"``: Lanczos re-orthogonalises each vector against all before it
      (the paper's, ``"none"``, is equal in exact arithmetic; ``"full"`` keeps ``V``
      orthonormal in float32; tests/recipes/test_saddle_free.py holds both to the same
      convergence within a stated tolerance).
    - ``k = 20`` is our choice (the paper's value for its networks is not used here); ``k`` is
      clamped to the parameter count.
    - ``start="random"`` and ``outside="gradient"`` are our options (a random start, and a
      gradient step on the part of ``g`` outside the space); the defaults are the paper's.
    - Refused under DDP and FSDP2 (the shell's rule for every estimator).
    """
    estimator = SaddleFreeNewton(
        k=k,
        damping_rule=damping_rule,
        dampings=dampings,
        damping=damping,
        start=start,
        outside=outside,
        reorthogonalize=reorthogonalize,
        seed=seed,
    )
    return estimated(sgd(momentum=0.0, nesterov=False), estimator)
