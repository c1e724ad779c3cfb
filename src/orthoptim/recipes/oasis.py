"""OASIS: a Hutchinson diagonal preconditioner with a step size from a local Lipschitz
estimate."""

from __future__ import annotations

from orthoptim.recipes.options import default
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.oasis import GradientDifference, Oasis, StepBlocks, StepSize
from orthoptim.transforms.scaling import AddWeightDecay


def oasis(
    *,
    beta2: float = default(Oasis, "beta2"),
    alpha: float = default(Oasis, "alpha"),
    warmup: int = default(Oasis, "warmup"),
    eta0: float = default(Oasis, "eta0"),
    step_size: StepSize = default(Oasis, "step_size"),
    blocks: StepBlocks = default(Oasis, "blocks"),
    gradient_difference: GradientDifference = default(Oasis, "gradient_difference"),
    seed: int = default(Oasis, "seed"),
) -> Chain:
    """OASIS (Jahani, Rusakov, Shi, Richtárik, Mahoney, Takáč, "Doubly Adaptive Scaled
    Algorithm for Machine Learning Using Second-Order Information", ICLR 2022, arXiv
    2109.05198), Algorithm 1, over every parameter of the model (one route, one step size).

    Chain: ``D_k = beta2 D_{k-1} + (1 - beta2) z_k ⊙ H z_k`` (Hutchinson, Rademacher ``z``),
    ``D^_k = max(|D_k|, alpha)``; ``eta_k = min(sqrt(1 + theta_{k-1}) eta_{k-1},
    ||w_k - w_{k-1}||_{D^_k} / (2 ||g_k - g_{k-1}||*_{D^_k}))``, ``theta_k = eta_k /
    eta_{k-1}``; ``u <- eta_k D^_k^{-1} g_k``; ``u <- u + lambda theta`` (decoupled decay,
    0 by default). ``D_0`` is the mean of ``warmup`` samples at the initial point, one per
    step, the parameters held there until the last, which takes the first step with
    ``eta_0`` (``transforms.oasis.Oasis``).

    No learning rate to tune: the step size adapts. The optimizer's lr (the registry's
    default 1) multiplies the adaptive step and leaves it the paper's at 1; with
    ``step_size="fixed"`` (the paper's fixed-learning-rate OASIS) it is the step size.

    Needs ``step(closure)`` with a closure that zeroes the gradients, computes the loss and
    calls ``loss.backward(create_graph=True)`` (docs/architecture.md, "The step, top to
    bottom"); attention should run on the math kernel there
    (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``: the fused ones have no double
    backward). Per step, at the defaults: 2 forwards and 2 backwards with the graph kept (the
    closure at the previous parameters for ``g_{k-1}`` on the same batch, then at the
    current ones) and 1 double backward (the Hessian-vector products along the step's
    probes, ``orthoptim.hvp``); ``gradient_difference="previous_step"``: 1 forward, 1
    backward, 1 double backward. ``blocks="model"`` (the paper's one step size) runs in one
    process (``route_wide``), and every closure-based recipe is refused under DDP or FSDP2;
    ``"parameter"`` gives each parameter tensor its own step size.

    Memory: ``D`` and ``w_{k-1}``: 8 bytes per float32 element (``"previous_step"`` adds
    ``g_{k-1}``: 12; ``"fixed"``: 4), plus two scalars per tensor; the double backward keeps
    the first backward's graph alive until the products are taken.

    Defaults: ``beta2=0.99``, ``alpha=1e-2``, ``warmup=5``, ``eta0=1e-3``, chosen on the
    teacher-student problems (tests/recipes/test_oasis.py) and the arena's digits task: with
    a small ``alpha`` (1e-5) the flat directions' tiny ``D^`` bound the shared step size and
    the rest of the model barely moved.

    Differences from the reference (the paper, Algorithm 1; no code of the authors was found
    to pin: an oracle written from the paper tests it, tests/recipes/test_oasis.py):
    ``D_0``'s warm start takes one Hutchinson sample per step at ``w_0`` on that step's batch
    (the shell evaluates one Hessian-vector product per parameter and step), so the first
    ``warmup - 1`` steps do not move the parameters; ``g_{k-1}`` is the gradient at
    ``w_{k-1}`` on the current batch (Algorithm 1's ``grad F(w_{k-1})`` with the step's
    minibatch; the previous step's gradient is ``gradient_difference="previous_step"``,
    whose step size collapses under minibatch noise: tested there); ``eta_0``, ``beta2``,
    ``alpha`` and ``warmup`` are inputs the algorithm leaves open, ours above; the
    estimate's guards (``functional.oasis.lipschitz_step``: a zero gradient or parameter
    difference gives no bound, a non-finite step size keeps the previous one) are ours; the
    probes are independent across parameters and drawn from a generator seeded by ``(seed,
    step, parameter index)`` for bit-exact resumption.
    """
    return chain(
        Oasis(
            beta2=beta2,
            alpha=alpha,
            warmup=warmup,
            eta0=eta0,
            step_size=step_size,
            blocks=blocks,
            gradient_difference=gradient_difference,
            seed=seed,
        ),
        AddWeightDecay(),
    )
