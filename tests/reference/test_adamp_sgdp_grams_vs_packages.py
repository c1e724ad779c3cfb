"""Grams, AdamP, SGDP and the cautious mask against pytorch-optimizer 4.1.0 and heavyball 3.2.1.

Each test feeds one fixed gradient sequence (no backprop) to our recipe, configured to the
package's conventions, and to the package's optimizer, and compares the parameters after every
step. "scale-invariant" runs remove each gradient's per-channel component along the current
weight, so AdamP/SGDP's projection fires on every matrix and conv kernel (checked).

Conventions matched (pytorch-optimizer 4.1.0): ``Grams`` adds ``eps`` to ``sqrt(v_hat)``
(``eps_placement="debiased"``); ``AdamP`` adds it to ``sqrt(v)`` (``"raw"``); ``SGDP`` clones
the momentum buffer before projecting (ours never projects it); the cautious mask rescales by
``numel / (nnz + 1)`` (``rescale="plus_one"``). heavyball 3.2.1 has no Grams/AdamP/SGDP; its
``caution`` rescales by ``numel / max(nnz, 1)`` (``"at_least_one"``).

Measured max abs differences over 25 steps (torch 2.13.0 CPU; shapes (8,6), (4,3,3,3), (7,);
|p| <= ~4; lr 2**-6, wd 2**-7), printed by ``pytest -s``:

| against (25 steps)                                 | float64    | float32    |
|-----------------------------------------------------|------------|------------|
| pytorch-optimizer Grams                             | 2.7e-15    | 8.3e-7     |
| pytorch-optimizer AdamP, +nesterov, +scale-inv.     | <= 4.0e-15 | <= 1.4e-6  |
| pytorch-optimizer SGDP, +nesterov/damped/mu=0, +s-i | <= 4.0e-15 | <= 2.2e-6  |
| pytorch-optimizer AdamP(cautious=True), scale-inv.  | 4.0e-15    | 1.6e-6     |
| heavyball AdamW(caution=True), eps 1e-30            | 4.6e-9     | -          |

Why not zero: the packages decay ``p *= 1 - lr wd`` and then add the step (two roundings of
``p``), we subtract ``lr (u + wd p)`` (one), and they fold the bias corrections into the step
size: a few ulp of |p| per step, hence tolerances 1e-13 (float64) and 1e-5 (float32). heavyball
computes the caution rescale ``numel / kept`` from int64 tensors, which true division returns in
float32 (the default dtype), so every masked step carries a relative error up to 2**-24 of the
update: bounded by ``steps * lr * max|u| * 2**-24 ~ 25 * 2**-6 * 3 * 6e-8 = 7e-8``; its AdamW
without caution matches ours to 1.8e-15 at eps 1e-30 (at eps 1e-8 its eps is a clamp of ``v``
rather than an addend).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from orthoptim import ChainOptimizer
from orthoptim.recipes import adamw
from orthoptim.recipes.gradient_sign import cautious, grams
from orthoptim.recipes.radial import adamp, sgdp
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.cautious import CautiousMask
from tests.helpers import fixed_grads
from tests.recipes.test_adamp_sgdp_grams import radial_free

pytestmark = pytest.mark.reference

STEPS = 25
LR, WD = 2.0**-6, 2.0**-7
SHAPES = [(8, 6), (4, 3, 3, 3), (7,)]
TOL = {torch.float64: 1e-13, torch.float32: 1e-5}


@pytest.fixture
def po(pytorch_optimizer):
    return pytorch_optimizer


def run_pair(
    recipe,
    theirs: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    dtype: torch.dtype,
    scale_invariant: bool = False,
    shapes=SHAPES,
) -> float:
    """Max abs parameter difference over all steps; with ``scale_invariant`` also checks that
    the projection fired (our trajectory differs from the unprojected one)."""
    inits = [fixed_grads(s, 1, dtype, seed=100 + i)[0] for i, s in enumerate(shapes)]
    grads = [fixed_grads(s, STEPS, dtype, seed=1 + i) for i, s in enumerate(shapes)]
    ours_ps = [p.clone().requires_grad_() for p in inits]
    theirs_ps = [p.clone().requires_grad_() for p in inits]
    ours, other = ChainOptimizer(ours_ps, recipe, lr=LR, weight_decay=WD), theirs(theirs_ps)
    worst = 0.0
    for t in range(STEPS):
        for a, b, gs in zip(ours_ps, theirs_ps, grads, strict=True):
            g = radial_free(gs[t], a.detach()) if scale_invariant else gs[t]
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        other.step()
        for a, b in zip(ours_ps, theirs_ps, strict=True):
            worst = max(worst, (a.detach() - b.detach()).abs().max().item())
    return worst


def check(label: str, worst: float, dtype: torch.dtype) -> None:
    print(f"{label} {dtype}: max |dp| {worst:.2e}")
    assert worst <= TOL[dtype]


DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)


@DTYPES
def test_grams(po, dtype) -> None:
    theirs = lambda ps: po.Grams(ps, lr=LR, weight_decay=WD)  # noqa: E731
    check("Grams", run_pair(grams(eps_placement="debiased"), theirs, dtype), dtype)


@DTYPES
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("scale_invariant", [False, True], ids=["plain", "scale_invariant"])
def test_adamp(po, dtype, nesterov, scale_invariant) -> None:
    theirs = lambda ps: po.AdamP(ps, lr=LR, weight_decay=WD, nesterov=nesterov)  # noqa: E731
    recipe = adamp(eps_placement="raw", nesterov=nesterov)
    label = f"AdamP nesterov={nesterov} scale_invariant={scale_invariant}"
    check(label, run_pair(recipe, theirs, dtype, scale_invariant), dtype)


SGDP_CASES = [(0.9, 0.0, True), (0.9, 0.0, False), (0.9, 0.3, False), (0.0, 0.0, False)]


@DTYPES
@pytest.mark.parametrize(("momentum", "dampening", "nesterov"), SGDP_CASES)
@pytest.mark.parametrize("scale_invariant", [False, True], ids=["plain", "scale_invariant"])
def test_sgdp(po, dtype, momentum, dampening, nesterov, scale_invariant) -> None:
    def theirs(ps):
        return po.SGDP(
            ps, lr=LR, weight_decay=WD, momentum=momentum, dampening=dampening, nesterov=nesterov
        )

    recipe = sgdp(momentum=momentum, dampening=dampening, nesterov=nesterov)
    label = (
        f"SGDP mu={momentum} d={dampening} nesterov={nesterov} scale_invariant={scale_invariant}"
    )
    check(label, run_pair(recipe, theirs, dtype, scale_invariant), dtype)


def test_scale_invariant_runs_do_project(po) -> None:
    theirs = lambda ps: po.AdamP(ps, lr=LR, weight_decay=WD, delta=0.0)  # noqa: E731
    # With delta = 0 the package never projects (|cos| < 0 is never true): ours must differ.
    worst = run_pair(adamp(eps_placement="raw"), theirs, torch.float64, scale_invariant=True)
    assert worst > 1e-4


@DTYPES
def test_cautious_adamp(po, dtype) -> None:
    theirs = lambda ps: po.AdamP(ps, lr=LR, weight_decay=WD, cautious=True)  # noqa: E731
    recipe = cautious(adamp(eps_placement="raw"), rescale="plus_one")
    check("AdamP(cautious=True)", run_pair(recipe, theirs, dtype, scale_invariant=True), dtype)


def test_cautious_mask_matches_pytorch_optimizer_apply_cautious(po) -> None:
    for seed in range(5):
        g, u = fixed_grads((9, 7), 2, torch.float64, seed=seed)
        theirs = u.clone()
        po.base.optimizer.BaseOptimizer.apply_cautious(theirs, g)
        ours = CautiousMask(rescale="plus_one").apply(u.clone(), {}, Ctx(1, 0.1, 0.0, g, g))
        torch.testing.assert_close(ours, theirs, rtol=1e-15, atol=0)


def test_cautious_mask_matches_heavyball_caution(heavyball) -> None:
    for seed in range(5):
        g, u = fixed_grads((9, 7), 2, torch.float64, seed=seed)
        theirs = heavyball.utils.caution(g, u.clone())
        ours = CautiousMask(rescale="at_least_one").apply(u.clone(), {}, Ctx(1, 0.1, 0.0, g, g))
        # heavyball's numel / kept is a float32 scalar (see the module docstring).
        torch.testing.assert_close(ours, theirs, rtol=2.0**-23, atol=0)


def test_cautious_adamw_matches_heavyball(heavyball) -> None:
    def theirs(ps):
        return heavyball.AdamW(
            ps, lr=LR, weight_decay=WD, betas=(0.9, 0.99), eps=1e-30, caution=True,
            storage_dtype="float64",
        )  # fmt: skip

    recipe = cautious(adamw(betas=(0.9, 0.99), eps=1e-30), rescale="at_least_one")
    worst = run_pair(recipe, theirs, torch.float64, shapes=[(8, 6), (7,)])
    print(f"heavyball AdamW(caution=True) float64: max |dp| {worst:.2e}")
    assert worst <= 1e-7  # 7e-8 bound from heavyball's float32 rescale (module docstring)
