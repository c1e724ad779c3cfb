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


def test_lra_hvp_matches_psgd_torch_newton_lra(monkeypatch, psgd_torch) -> None:
    """``psgd_lra(curvature="hvp")`` against ``LRA`` with ``preconditioner_type="Newton"`` (the
    reference's default) and exact products, on one matrix (per-parameter blocks: a single
    parameter is both the reference's block and ours). Its draws are replaced as in
    ``test_psgd_lra_vs_psgd_torch.py``: ``torch.randn`` (the initial ``U``, ``V``) by our
    ``N x 2 rank`` draw, ``torch.randn_like`` (the probe) by ours, ``torch.rand`` (update,
    balance, U-or-V) by our host draws. Measured max abs difference: 1.1e-16 (float64)."""
    from orthoptim.functional.psgd import BALANCE_STREAM, host_uniform

    gen = torch.Generator().manual_seed(1)
    dtype = torch.float64
    rank, seed = 4, 0
    x = torch.randn(32, 5, generator=gen, dtype=dtype)
    y = torch.randn(32, 3, generator=gen, dtype=dtype)
    head = torch.randn(3, 6, generator=gen, dtype=dtype) / 6**0.5
    w0 = torch.randn(6, 5, generator=gen, dtype=dtype) / 5**0.5
    ours, theirs = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    lr = 0.05

    def loss_of(w: Tensor) -> Tensor:
        return (torch.tanh(x @ w.T) @ head.T - y).square().mean()

    opt = orthoptim.build(
        "psgd_lra", [ours], lr=lr, curvature="hvp", rank=rank, momentum=0.0, clip_rms=1e9
    )
    n = ours.numel()
    init = probe((n, 2 * rank), seed, 0, dtype, torch.device("cpu"))
    # The reference divides its draw by a float32 square root, ours by a float64 one.
    scale = torch.tensor(float(n * (rank + 10))).sqrt().item() / (n * (rank + 10)) ** 0.5
    calls = {"randn": 0, "rand": 0, "step": 0}

    def fake_randn(*shape, **_):
        half = calls["randn"] % 2
        calls["randn"] += 1
        return (init * scale)[:, rank:] if half else (init * scale)[:, :rank]

    with monkeypatch.context() as patch:
        patch.setattr(torch, "randn", fake_randn)
        ref = psgd_torch.psgd.LRA(
            [theirs],
            rank_of_approximation=rank,
            lr_params=lr,
            lr_preconditioner=0.1,
            momentum=0.0,
            grad_clip_max_norm=None,
            preconditioner_update_probability=1.0,
            step_normalizer="2nd",
            exact_hessian_vector_product=True,
            preconditioner_type="Newton",
        )

    def fake_rand(*_, **__):
        k = calls["rand"] % 3
        calls["rand"] += 1
        step = calls["step"]
        if k == 0:
            return torch.tensor(0.0)  # update at every step, as ours
        if k == 1:
            return torch.tensor(0.0 if host_uniform(seed, step, BALANCE_STREAM) < 0.01 else 1.0)
        return torch.tensor(host_uniform(seed, step, 2))

    def seeded_randn_like(t, dtype=None, **_):
        return probe(tuple(t.shape), seed, calls["step"], dtype or t.dtype, t.device)

    monkeypatch.setattr(torch, "randn_like", seeded_randn_like)
    monkeypatch.setattr(torch, "rand", fake_rand)

    def our_closure() -> Tensor:
        opt.zero_grad()
        loss = loss_of(ours)
        loss.backward(create_graph=True)
        return loss

    worst, losses = 0.0, []
    for step in range(1, 21):
        calls["step"] = step
        losses.append(opt.step(our_closure).item())
        ref.step(lambda: loss_of(theirs))
        worst = max(worst, (ours - theirs).abs().max().item())
    print(f"\npsgd_lra hvp vs psgd_torch LRA Newton: max abs diff {worst:.2e}")
    assert losses[-1] < 0.9 * losses[0]
    assert worst < TOL
