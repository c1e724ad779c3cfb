"""orthoptim's ``soap`` and ``shampoo`` against pytorch-optimizer 4.1.0 and heavyball 3.2.1.

Each test feeds one fixed gradient sequence (no backprop) to ``orthoptim.build`` configured to a
package's conventions and to that package's optimizer, and compares the parameters after every
step. Measured max abs differences (torch 2.13.0 CPU, 20 steps, p ~ N(0, 1), lr 1e-2; re-measure
with ``python -m pytest tests/reference/test_kronecker_vs_packages.py -q -s``):

| package / optimizer       | dtype   | shapes                      | max abs diff |
|---------------------------|---------|-----------------------------|--------------|
| pytorch-optimizer SOAP    | float64 | (6,9), (12,4), (30,5)       | 2.4e-8       |
| pytorch-optimizer SOAP    | float32 | (6,9), (12,4), (30,5)       | 2.4e-7       |
| pytorch-optimizer Shampoo | float64 | (6,9), (12,4)               | 4.4e-16      |
| pytorch-optimizer Shampoo | float32 | (6,9), (12,4)               | 3.6e-7       |
| heavyball SOAP            | float64 | (4,9), (9,4), one side      | 1.5e-8       |
| heavyball SOAP            | float32 | (4,9), (9,4), one side      | 6.3e-7       |

Settings used to match:

* pytorch-optimizer ``SOAP(lr, betas=(0.95, 0.95), shampoo_beta=0.95, weight_decay=0,
  precondition_frequency=3, max_precondition_dim=20)`` = our defaults (``first_step="skip"``,
  ``correct_bias=True``, ``eps_placement="raw"``) with ``precondition_every=3``. It keeps the
  first moment in the original space and projects it every step; we keep it rotated and rotate
  it at a refresh: the agreement checks that the two are the same. It runs the QR in float32
  even for float64 parameters, hence 1e-8 in float64. Weight decay is left at 0: it decays after
  the update (ours: with it), a difference of order lr^2 wd. Vectors are not compared: it skips
  their first step (we do not: they have no basis to initialise).
* pytorch-optimizer ``Shampoo(lr, momentum=0, matrix_eps=eps)`` (original Shampoo: summed
  factors started at ``eps I``, inverse 4th roots by SVD every step) = ours with
  ``momentum=0, factor_beta=1, grafting="none", precondition_every=1`` (factors from 0 with
  ``eps I`` added before the root: the same matrix).
* heavyball ``SOAP(lr, betas=(0.9, 0.95), shampoo_beta=0.95, weight_decay=0,
  precondition_frequency=1, max_precond_dim=4, merge_dims=False)`` = ours with
  ``eps_placement="debiased"`` (its debiased betas are bias correction with eps after it) and
  ``precondition_every=1``. Not matchable otherwise: heavyball refreshes on a cumulative
  probability per optimizer step (steps f, 2f, ...; we and nikhilvyas/SOAP count Adam steps),
  lifts the factor by ``max(eps, 64 n eps_dtype)`` times its largest eigenvalue before the QR
  (hence 1e-8), and its ``eigh`` picks other vectors inside a degenerate eigenspace: with a
  rank-deficient factor (the larger side of a non-square gradient in the first steps) the
  chosen basis, and so Adam's per-coordinate second moment, differ at O(1). Only the full-rank
  smaller side is preconditioned here (``max_precond_dim=4``). ``merge_dims`` (heavyball's
  default) would precondition the flattened tensor. heavyball has no plain Shampoo (its
  ``KLShampoo`` is another algorithm); Distributed Shampoo's conventions (grafting, momentum,
  EMA factors) are checked against the naive oracle in ``tests/recipes/test_kronecker.py``.
"""

from __future__ import annotations

import pytest
import torch

import orthoptim

pytestmark = pytest.mark.reference


def _compare(make_ours, make_ref, shape, dtype, steps=20) -> float:
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(shape, generator=gen, dtype=dtype)
    grads = [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]
    ours, theirs = p0.clone().requires_grad_(), torch.nn.Parameter(p0.clone())
    opt, ref = make_ours([ours]), make_ref([theirs])
    worst = 0.0
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        worst = max(worst, (ours - theirs).abs().max().item())
    return worst


# The references refresh every basis at the same step, with float32 (or float64) products.
SOAP_REFERENCE_PATH = {"refresh_schedule": "together", "matmul_dtype": "factor"}

# float64: the reference's float32 QR (1e-7 relative in the basis); float32: a few ulp per step.
TOL = {torch.float64: 1e-6, torch.float32: 5e-6}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(6, 9), (12, 4), (30, 5)])
def test_soap_matches_pytorch_optimizer(shape, dtype, pytorch_optimizer) -> None:
    po = pytorch_optimizer
    worst = _compare(
        lambda ps: orthoptim.build(
            "soap",
            ps,
            lr=1e-2,
            weight_decay=0.0,
            precondition_every=3,
            max_precond_dim=20,
            **SOAP_REFERENCE_PATH,
        ),
        lambda ps: po.SOAP(
            ps,
            lr=1e-2,
            betas=(0.95, 0.95),
            shampoo_beta=0.95,
            weight_decay=0.0,
            precondition_frequency=3,
            max_precondition_dim=20,
        ),
        shape,
        dtype,
    )
    print(f"pytorch-optimizer SOAP {shape} {dtype}: {worst:.1e}")
    assert worst < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(6, 9), (12, 4)])
def test_shampoo_matches_pytorch_optimizer(shape, dtype, pytorch_optimizer) -> None:
    po = pytorch_optimizer
    worst = _compare(
        lambda ps: orthoptim.build(
            "shampoo",
            ps,
            lr=1e-2,
            weight_decay=0.0,
            momentum=0.0,
            factor_beta=1.0,
            grafting="none",
            precondition_every=1,
            eps=1e-6,
            refresh_schedule="together",
        ),
        lambda ps: po.Shampoo(ps, lr=1e-2, momentum=0.0, matrix_eps=1e-6),
        shape,
        dtype,
        steps=15,
    )
    print(f"pytorch-optimizer Shampoo {shape} {dtype}: {worst:.1e}")
    # float64: eigh (ours) and SVD (theirs) of the same SPD matrix agree to round-off.
    assert worst < (1e-12 if dtype == torch.float64 else 5e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(4, 9), (9, 4)])
def test_soap_matches_heavyball(shape, dtype, heavyball) -> None:
    hb = heavyball
    storage = "float64" if dtype == torch.float64 else "float32"
    worst = _compare(
        lambda ps: orthoptim.build(
            "soap",
            ps,
            lr=1e-2,
            weight_decay=0.0,
            betas=(0.9, 0.95),
            precondition_every=1,
            max_precond_dim=4,
            eps_placement="debiased",
            **SOAP_REFERENCE_PATH,
        ),
        lambda ps: hb.SOAP(
            ps,
            lr=1e-2,
            betas=(0.9, 0.95),
            shampoo_beta=0.95,
            weight_decay=0.0,
            precondition_frequency=1,
            max_precond_dim=4,
            merge_dims=False,
            storage_dtype=storage,
        ),
        shape,
        dtype,
    )
    print(f"heavyball SOAP {shape} {dtype}: {worst:.1e}")
    # heavyball's QR lift (1e-8 of the largest eigenvalue) bounds the float64 agreement.
    assert worst < TOL[dtype]
