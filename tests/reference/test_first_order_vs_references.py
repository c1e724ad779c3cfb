"""INNAprop, Gravity and Optimistic AMSGrad's AMSGrad core against their references.

Each test feeds one fixed gradient sequence (no backprop) to our optimizer and to the reference
and compares the parameters after every step (shapes (8, 6), (4, 3, 3, 3), (7,); 25 steps).

* ``innaprop`` against the authors' ``INNAprop`` (innaprop/innaprop@d4bef0c ``innaprop.py``,
  7 kB, torch only), loaded from that commit's blob in the fetched snapshot of the repository
  (``INNAPROP_REPO``, a bare git directory); skipped where the snapshot is absent.
* ``gravity`` against the authors' PyTorch port (dariush-bahrami/gravity.optimizer@9c12068
  ``implementations/gravity_optimizer_pytorch.py``, 2.6 kB, torch only, read from its fetched
  snapshot like INNAprop's; skipped where absent) and pytorch-optimizer 4.1.0 ``Gravity``,
  their initial velocities set to ours (they draw it from torch's global generator, we from a
  seeded one).
* ``optimistic_amsgrad(prediction="none", convention="torch")`` against
  ``torch.optim.Adam(amsgrad=True)`` (and ``AdamW`` with decay).

Measured max abs differences (torch 2.13.0 CPU), printed by ``pytest -s``:

| against (25 steps)                         | float64  | float32  |
|--------------------------------------------|----------|----------|
| innaprop/innaprop@d4bef0c INNAprop (3 settings) | <= 7.6e-15 | <= 2.4e-6 |
| pytorch-optimizer Gravity (2 settings)     | 2.2e-16  | 1.2e-7   |
| gravity.optimizer@9c12068 Gravity (PyTorch) | 4.4e-16 | 1.2e-7   |
| torch Adam(amsgrad=True) / AdamW, wd 2^-7  | 2.2e-16  | 6.0e-8   |

Why not zero: the references decay ``p *= 1 - lr wd`` and then add the step (two roundings),
INNAprop's reference folds its coefficients differently and Gravity's divides by ``1 / max|g|``
where we multiply by ``max|g|``: a few ulp of ``|p|`` per step, tolerances 1e-13 / 1e-5.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from orthoptim import ChainOptimizer
from orthoptim.functional.first_order import gravity_initial_velocity
from orthoptim.recipes.first_order import gravity, innaprop, optimistic_amsgrad
from tests.helpers import fixed_grads

pytestmark = pytest.mark.reference

STEPS = 25
SHAPES = [(8, 6), (4, 3, 3, 3), (7,)]
TOL = {torch.float64: 1e-13, torch.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
INNAPROP_REPO = Path("/work/.mirror/innaprop+innaprop/repo")
INNAPROP_COMMIT = "d4bef0c72a10648a5b8efee6d6a9daff02fa4a54"
GRAVITY_REPO = Path("/work/.mirror/dariush-bahrami+gravity.optimizer/repo")
GRAVITY_COMMIT = "9c12068752097a9336d74c89d841781188c8b9d6"


def run_pair(
    recipe,
    theirs: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    dtype: torch.dtype,
    lr: float,
    weight_decay: float,
    prepare: Callable[[list[torch.Tensor], torch.optim.Optimizer], None] | None = None,
) -> float:
    """Max abs parameter difference over every step of the fixed gradient sequences."""
    inits = [fixed_grads(s, 1, dtype, seed=100 + i)[0] for i, s in enumerate(SHAPES)]
    grads = [fixed_grads(s, STEPS, dtype, seed=1 + i) for i, s in enumerate(SHAPES)]
    ours_ps = [p.clone().requires_grad_() for p in inits]
    theirs_ps = [p.clone().requires_grad_() for p in inits]
    ours = ChainOptimizer(ours_ps, recipe, lr=lr, weight_decay=weight_decay)
    other = theirs(theirs_ps)
    if prepare is not None:
        prepare(theirs_ps, other)
    worst = 0.0
    for t in range(STEPS):
        for a, b, gs in zip(ours_ps, theirs_ps, grads, strict=True):
            a.grad, b.grad = gs[t].clone(), gs[t].clone()
        ours.step()
        other.step()
        for a, b in zip(ours_ps, theirs_ps, strict=True):
            worst = max(worst, (a.detach() - b.detach()).abs().max().item())
    return worst


def check(label: str, worst: float, dtype: torch.dtype) -> None:
    print(f"{label} {dtype}: max |dp| {worst:.2e}")
    assert worst <= TOL[dtype]


def load_class(repo: Path, commit: str, path: str, cls: str) -> type[torch.optim.Optimizer]:
    """Class ``cls`` of ``path`` at ``commit`` in the bare snapshot ``repo`` (no file of the
    authors' code is kept in this repository); skipped where the snapshot is absent."""
    if not (repo / "objects").is_dir():
        pytest.skip(f"needs the snapshot of {repo.name} at {repo}")
    source = subprocess.run(
        ["git", "-C", str(repo), "show", f"{commit}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = f"reference_{repo.parent.name.replace('+', '_').replace('.', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(name, None)
    exec(compile(source, f"{repo.parent.name}@{commit[:7]}/{path}", "exec"), module.__dict__)
    return getattr(module, cls)


def authors_innaprop() -> type[torch.optim.Optimizer]:
    return load_class(INNAPROP_REPO, INNAPROP_COMMIT, "innaprop.py", "INNAprop")


@DTYPES
@pytest.mark.parametrize(
    ("alpha", "beta", "sigma", "weight_decay"),
    [(0.1, 0.9, 0.999, 0.01), (2.0, 2.0, 0.99, 0.1), (0.5, 1.5, 0.9, 0.0)],
    ids=["cifar", "gpt2", "no_decay"],
)
def test_innaprop_matches_the_authors_code(dtype, alpha, beta, sigma, weight_decay) -> None:
    cls = authors_innaprop()
    lr = 2.0**-6

    def theirs(ps):
        return cls(ps, lr=lr, alpha=alpha, beta=beta, sigma=sigma, weight_decay=weight_decay)

    recipe = innaprop(alpha=alpha, beta=beta, sigma=sigma)
    label = f"INNAprop alpha={alpha} beta={beta} wd={weight_decay}"
    check(label, run_pair(recipe, theirs, dtype, lr, weight_decay), dtype)


def test_innaprop_decay_points_differ_by_the_order_of_lr_squared_decay() -> None:
    cls = authors_innaprop()
    lr, wd = 2.0**-6, 0.1

    def theirs(ps):
        return cls(ps, lr=lr, alpha=0.1, beta=0.9, weight_decay=wd)

    worst = run_pair(innaprop(decay_point="current"), theirs, torch.float64, lr, wd)
    print(f"INNAprop decay_point='current' vs reference: {worst:.2e}")
    assert 1e-9 < worst < STEPS * lr**2 * wd * 10


def set_initial_velocity(alpha: float, lr: float, seed: int = 0):
    def prepare(ps: list[torch.Tensor], opt: torch.optim.Optimizer) -> None:
        for position, p in enumerate(ps):  # one group: positions in order
            opt.state[p]["v"] = gravity_initial_velocity(
                tuple(p.shape), alpha / lr, seed, position, p.dtype
            )

    return prepare


@DTYPES
@pytest.mark.parametrize(("alpha", "beta"), [(0.01, 0.9), (0.1, 0.5)])
def test_gravity_matches_pytorch_optimizer(pytorch_optimizer, dtype, alpha, beta) -> None:
    lr = 2.0**-4

    def theirs(ps):
        return pytorch_optimizer.Gravity(ps, lr=lr, alpha=alpha, beta=beta, foreach=False)

    worst = run_pair(
        gravity(alpha=alpha, beta=beta), theirs, dtype, lr, 0.0, set_initial_velocity(alpha, lr)
    )
    check(f"Gravity alpha={alpha} beta={beta}", worst, dtype)


@DTYPES
@pytest.mark.parametrize(("alpha", "beta"), [(0.01, 0.9), (0.1, 0.5)])
def test_gravity_matches_the_authors_pytorch_port(dtype, alpha, beta) -> None:
    cls = load_class(
        GRAVITY_REPO, GRAVITY_COMMIT, "implementations/gravity_optimizer_pytorch.py", "Gravity"
    )
    lr = 2.0**-4

    def theirs(ps):
        return cls(ps, lr=lr, alpha=alpha, beta=beta)

    worst = run_pair(
        gravity(alpha=alpha, beta=beta), theirs, dtype, lr, 0.0, set_initial_velocity(alpha, lr)
    )
    check(f"gravity.optimizer@9c12068 Gravity alpha={alpha} beta={beta}", worst, dtype)


def test_gravity_initial_velocity_is_the_references_distribution(pytorch_optimizer) -> None:
    """Without setting theirs, the first steps differ only through v_0 ~ N(0, (alpha/lr)^2):
    ours has that spread too."""
    lr, alpha = 0.05, 0.01
    p = torch.zeros(400, 300, requires_grad=True)
    opt = ChainOptimizer([p], gravity(alpha=alpha), lr=lr)
    p.grad = torch.zeros_like(p)
    opt.step()
    v0 = opt.state[p]["gravity.v"] / gravity_beta_1(0.9)
    assert abs(v0.std().item() / (alpha / lr) - 1) < 0.01
    assert abs(v0.mean().item()) < 0.01 * alpha / lr


def gravity_beta_1(beta: float) -> float:
    return (beta + 1.0) / 3.0


@DTYPES
@pytest.mark.parametrize("weight_decay", [0.0, 2.0**-7])
def test_amsgrad_core_matches_torch(dtype, weight_decay) -> None:
    lr, betas = 2.0**-6, (0.9, 0.99)
    cls = torch.optim.AdamW if weight_decay else torch.optim.Adam

    def theirs(ps):
        return cls(ps, lr=lr, betas=betas, weight_decay=weight_decay, amsgrad=True)

    recipe = optimistic_amsgrad(betas=betas, prediction="none", convention="torch")
    worst = run_pair(recipe, theirs, dtype, lr, weight_decay)
    check(f"torch {cls.__name__}(amsgrad=True)", worst, dtype)


def test_the_optimistic_step_changes_the_trajectory() -> None:
    """The comparison above can fail: with a prediction, the same core no longer matches."""
    lr, betas = 2.0**-6, (0.9, 0.99)

    def theirs(ps):
        return torch.optim.Adam(ps, lr=lr, betas=betas, amsgrad=True)

    for prediction in ("last_gradient", "extrapolation"):
        recipe = optimistic_amsgrad(betas=betas, prediction=prediction, convention="torch")
        assert run_pair(recipe, theirs, torch.float64, lr, 0.0) > 1e-3
