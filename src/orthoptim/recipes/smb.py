"""SMB: SGD whose failed trial steps are replaced by a per-tensor model step."""

from __future__ import annotations

from orthoptim.recipes.baselines import sgd
from orthoptim.recipes.options import default
from orthoptim.recipes.plan import Plan, estimated
from orthoptim.transforms.smb import ModelBlocks, ModelBuilding


def smb(
    *,
    c: float = default(ModelBuilding, "c"),
    eta: float = default(ModelBuilding, "eta"),
    model_blocks: ModelBlocks = default(ModelBuilding, "model_blocks"),
    autoschedule: bool = default(ModelBuilding, "autoschedule"),
    n_batches_per_epoch: int = default(ModelBuilding, "n_batches_per_epoch"),
    gamma: float = default(ModelBuilding, "gamma"),
    beta: float = default(ModelBuilding, "beta"),
    lr_max: float = default(ModelBuilding, "lr_max"),
) -> Plan:
    """SMB, stochastic model building (Birbil, Martin, Onay, Öztoprak, "Bolstering Stochastic
    Gradient Descent with Model Building", arXiv 2111.07058; TOP 2024).

    Each step, on the closure's minibatch: the SGD trial ``x - lr g``; kept when
    ``f(x - lr g) <= f(x) - c lr |g|^2`` on the same minibatch, else every parameter tensor
    steps to the minimiser of its own quadratic model built from ``g`` and the trial's gradient
    ``g_t`` (``transforms.smb.ModelBuilding``; ``functional.smb`` derives the closed form
    ``x - lr (alpha g + beta (g_t - g))`` from the reference's coefficients). The estimator
    returns the gradient the plain SGD route turns into that point (``ModelBuilding``'s
    docstring says why a gradient and not the step). Needs ``step(closure)`` with a closure that
    zeroes the gradients, computes the minibatch loss, calls ``loss.backward()`` and returns
    the loss; the closure runs twice per step (2 forward, 2 backward). No state without
    ``autoschedule`` (0 bytes per parameter element; the step counter only), two scalars per
    tensor with it. Transient memory in the step: the trial point, the trial's gradient (turned
    into ``y`` in place) and the estimate, and the oracle's copies of the parameters and
    gradients while it evaluates the trial.

    Defaults are the paper's experiments' (``paper_benchmarks.yaml``: lr 0.5, ``c = 0.1``,
    ``eta = 0.99``, ``autoschedule`` off; the registry's lr is 0.5). ``autoschedule=True``
    with ``n_batches_per_epoch`` set to the loader's length is the reference's lr schedule.

    Differences from the reference (sibirbil/SMB@17fb8ba ``source/smbsolve/smb.py``,
    ``SMB.step_smb``):

    - the accept/reject decision is taken on the device (``torch.where``), so the trial's
      gradient is always computed: 2 backward passes per step where the reference does 1 for a
      kept trial;
    - the model step in closed form (two norms per tensor) instead of the six dot products and
      coefficients ``cg, cs, cy`` (equal up to round-off, tests/functional/test_smb.py); a
      tensor whose gradient and gradient change are both zero takes no model step (the
      reference divides 0 by 0 there), and a gradient whose norm overflows keeps the trial
      untested, so the non-finite check names it (the reference's coefficients turn NaN);
    - param groups: one trial over all of them and one Armijo test with
      ``sum_groups lr_group |g_group|^2`` (the reference, with several groups, runs trial and
      test group after group, each against the step's first loss, and counts one model-step
      entry per group in ``autoschedule``); with one group (the reference's usage) they agree;
    - ``autoschedule``'s factor is per parameter state (``estimator.lr_factor``, so a torch lr
      scheduler still scales the lr) and its lr cap reads the group's lr times that factor;
    - weight decay (default 0; the reference has none) is the SGD route's L2 term added after
      the estimator, so it is not part of the Armijo test;
    - ``independent_batch=True`` (SMBi: the model step on the next minibatch) is not offered.

    References: S. Ilker Birbil, Ozgur Martin, Gonenc Onay, Figen Oztoprak, arXiv 2111.07058;
    sibirbil/SMB@17fb8ba4f440a5e36e66d701385ecdef6cb05723.
    """
    estimator = ModelBuilding(
        c=c,
        eta=eta,
        model_blocks=model_blocks,
        autoschedule=autoschedule,
        n_batches_per_epoch=n_batches_per_epoch,
        gamma=gamma,
        beta=beta,
        lr_max=lr_max,
    )
    return estimated(sgd(momentum=0.0, nesterov=False), estimator)
