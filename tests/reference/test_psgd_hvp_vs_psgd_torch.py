"""orthoptim's ``psgd_kron(curvature="hvp")`` against the author's ``psgd_torch==0.6.1``
``Kron`` with ``preconditioner_type="Newton"`` and ``exact_hessian_vector_product=True`` (its
``step(closure)`` differentiates the loss with ``create_graph=True``, draws ``v`` with
``torch.randn_like`` and fits ``Q`` to ``(v, H v)`` by ``update_precond_kron_math_``, the EQ step
normalised by the "2nd"-order lower bound: ours, ``functional.psgd.update_factors_``).

Matched settings: both factors triangular and initialised to ``I`` (``preconditioner_init_scale``
1, ``preconditioner_max_skew`` inf), an update every step, no balancing, no momentum, no clipping
(``clip_rms`` 1e9, ``grad_clip_max_norm`` None), ``lr_preconditioner`` 0.1. The reference's
global draws are replaced in the test: ``torch.randn_like`` by our seeded probe for the same
step (``functional.psgd.probe``, which our shell draws for ``Ctx.hvp``), ``torch.rand`` by 0.5
(update: ``0.5 < 1``; balance: ``0.5 < 0.01`` never). The model is a two-layer tanh network of
two matrices whose Hessian couples them (``H v`` of both references sums over both parameters'
probes), 20 steps, float64.

Measured max abs difference of the parameters over the steps (torch 2.13.0 CPU): 1.1e-16
(re-measure with ``python -m pytest tests/reference/test_psgd_hvp_vs_psgd_torch.py -q -s``).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import orthoptim
from orthoptim.functional.psgd import probe

pytestmark = [
    pytest.mark.reference,
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
]

SHAPES = [(6, 5), (3, 6)]
TOL = 1e-12


def _loss(params: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
    w1, w2 = params
    return (torch.tanh(x @ w1.T) @ w2.T - y).square().mean()


def test_hvp_matches_psgd_torch_newton_kron(monkeypatch, psgd_torch) -> None:
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float64
    x = torch.randn(32, 5, generator=gen, dtype=dtype)
    y = torch.randn(32, 3, generator=gen, dtype=dtype)
    p0 = [torch.randn(s, generator=gen, dtype=dtype) / s[1] ** 0.5 for s in SHAPES]
    ours = [p.clone().requires_grad_() for p in p0]
    theirs = [p.clone().requires_grad_() for p in p0]
    lr = 0.05
    opt = orthoptim.build(
        "psgd_kron",
        ours,
        lr=lr,
        curvature="hvp",
        momentum=0.0,
        balance_prob=0.0,
        clip_rms=1e9,
        precond_lr=0.1,
    )
    ref = psgd_torch.psgd.Kron(
        theirs,
        preconditioner_max_size=float("inf"),
        preconditioner_max_skew=float("inf"),
        preconditioner_init_scale=1.0,
        lr_params=lr,
        lr_preconditioner=0.1,
        momentum=0.0,
        grad_clip_max_norm=None,
        preconditioner_update_probability=1.0,
        step_normalizer="2nd",
        exact_hessian_vector_product=True,
        preconditioner_type="Newton",
    )
    current = {"step": 0}

    def seeded_randn_like(t, dtype=None, **_):
        return probe(tuple(t.shape), 0, current["step"], dtype or t.dtype, t.device)

    monkeypatch.setattr(torch, "randn_like", seeded_randn_like)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(0.5))

    def our_closure() -> Tensor:
        opt.zero_grad()
        loss = _loss(ours, x, y)
        loss.backward(create_graph=True)
        return loss

    worst, losses = 0.0, []
    for step in range(1, 21):
        current["step"] = step
        losses.append(opt.step(our_closure).item())
        ref.step(lambda: _loss(theirs, x, y))
        for a, b in zip(ours, theirs, strict=True):
            worst = max(worst, (a - b).abs().max().item())
    print(f"\npsgd_kron hvp vs psgd_torch Kron Newton: max abs diff {worst:.2e}")
    assert losses[-1] < 0.7 * losses[0]  # the parameters move: not a trivial sequence
    assert worst < TOL
