"""orthoptim's ``psgd_kron`` against heavyball==3.2.1 ``PSGDKron`` (gradient whitening).

What differs, and why a whole run matches only with diagonal factors:

* Step normaliser of a triangular factor: heavyball divides the EQ step by
  ``max_eigenvalue_spd(T1 + T2, power_iter=2)``, a Rayleigh estimate after two power steps of
  ``(T1 + T2)^2``; ours (and kron_torch's, psgd_torch's) by a lower bound of the spectral norm
  from two power steps of ``T1 + T2`` (``functional.psgd.spectral_norm_lower_bound``). No
  setting of either makes these equal, so the factors drift apart by the ratio of the two
  estimates (measured 1 - 2e-6 on the first update below; 2e-3 in the parameters after 20
  steps at lr 1e-2). What matches exactly: the direction, ``triu(T1 - T2) Q``, of one update
  from the same ``Q`` and ``(V, H)`` (``test_one_triangular_update_matches_up_to_the_normaliser``).
* heavyball keeps a running Lipschitz bound ``L <- max(ell, L + (1 - beta)(ell - L))``
  (``lower_bound_beta`` 0.9); ours normalises each step on its own: matched by
  ``lower_bound_beta=0``. For a diagonal factor both normalisers are ``max(t1 + t2)``.
* heavyball balances the factors at every update, ours with ``balance_prob``: matched by
  ``balance_prob=1`` (both: the geometric mean of the max-norms).
* heavyball fits ``H = M + (1e-9 + eps_f32 |M|) V`` (``dampen_grad``), ours ``H = M``: about
  1e-7 relative in ``H``, 3.4e-9 in the parameters below; the exact comparisons replace
  ``dampen_grad`` by the undamped pair (same probe), and one test keeps it.
* heavyball's group scalars are float32 tensors: its momentum's bias correction
  (``beta_debias``) and ``lr`` carry float32 rounding. With momentum the parameters agree to
  2.4e-8 (float64, 20 steps, lr 2^-7); without momentum (``exp_avg_input=False``,
  ``momentum_into_precond_update=False`` against ``momentum=0, whiten="gradient"``) and an lr
  exact in float32 they agree to 2.2e-16.
* Defaults not shared: heavyball's ``precond_init_scale=None`` heuristic (1 here), its
  ``trust_region_clip_`` update clipping (off here; ours: ``clip_rms`` 1e9), the probability
  schedule (1 here: an update every step; heavyball's cumulative-probability rule differs from
  our counter rule off the flat start), ``max_size_triangular`` 2048.

Probes: the reference draws ``V`` with the global ``torch.randn_like``; the test replaces it by
our seeded ``functional.psgd.probe`` for the same step. Measured (torch 2.13.0 CPU, float64, a
(6, 9) parameter, 20 steps, both factors diagonal): no momentum, undamped 2.2e-16; no momentum,
heavyball's damping 3.4e-9; momentum 0.9, undamped 2.4e-8 (re-measure with ``python -m pytest
tests/reference/test_psgd_vs_heavyball.py -q -s``).
"""

from __future__ import annotations

import pytest
import torch

import orthoptim
from orthoptim.functional.psgd import (
    _side_terms,
    balance_,
    probe,
    spectral_norm_lower_bound,
    update_factors_,
    whitening_pair,
)

pytestmark = [
    pytest.mark.reference,
    pytest.mark.filterwarnings("ignore:It's recommended to use precond_init_scale=None"),
]

LR = 2**-7  # exact in float32: heavyball's lr is a float32 tensor


def _undamped(monkeypatch, hb) -> None:
    def undamped(g, damp=0.0):
        return torch.randn_like(g), g

    monkeypatch.setattr(hb.utils, "dampen_grad", undamped)


def _compare(monkeypatch, hb, momentum: bool, steps: int = 20) -> float:
    gen = torch.Generator().manual_seed(0)
    shape, dtype = (6, 9), torch.float64
    p0 = torch.randn(shape, generator=gen, dtype=dtype)
    grads = [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]
    ours, theirs = p0.clone().requires_grad_(), torch.nn.Parameter(p0.clone())
    momentum_options = {} if momentum else {"momentum": 0.0, "whiten": "gradient"}
    opt = orthoptim.build(
        "psgd_kron",
        [ours],
        lr=LR,
        memory_save_mode="all_diag",
        balance_prob=1.0,
        clip_rms=1e9,
        **momentum_options,
    )
    ref_momentum = {} if momentum else {"exp_avg_input": False}
    ref = hb.PSGDKron(
        [theirs],
        lr=LR,
        preconditioner_update_probability=1.0,
        precond_init_scale=1.0,
        memory_save_mode="all_diag",
        lower_bound_beta=0.0,
        update_clipping=None,
        momentum_into_precond_update=momentum,
        q_dtype="float64",
        storage_dtype="float64",
        merge_dims=False,
        **ref_momentum,
    )
    current = {"step": 0}

    def seeded_randn_like(x, dtype=None, **_):
        return probe(tuple(x.shape), 0, current["step"], dtype or x.dtype, x.device)

    monkeypatch.setattr(torch, "randn_like", seeded_randn_like)
    worst = 0.0
    for step, g in enumerate(grads, start=1):
        current["step"] = step
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        worst = max(worst, (ours - theirs).abs().max().item())
    assert (ours - p0).abs().max() > 0.05  # the run moved: not a trivial agreement
    return worst


def test_diagonal_factors_without_momentum_match_heavyball(monkeypatch, heavyball) -> None:
    _undamped(monkeypatch, heavyball)
    worst = _compare(monkeypatch, heavyball, momentum=False)
    print(f"\npsgd_kron all_diag, no momentum vs heavyball PSGDKron: max abs diff {worst:.1e}")
    assert worst < 1e-14


def test_diagonal_factors_with_heavyball_damping(monkeypatch, heavyball) -> None:
    """heavyball's damping of ``H`` (eps_f32 relative) is all that separates the runs."""
    worst = _compare(monkeypatch, heavyball, momentum=False)
    print(f"\npsgd_kron all_diag vs heavyball PSGDKron, its damping: max abs diff {worst:.1e}")
    assert 1e-12 < worst < 1e-8


def test_diagonal_factors_with_momentum_match_heavyball(monkeypatch, heavyball) -> None:
    """heavyball's float32 bias correction of the momentum bounds the agreement."""
    _undamped(monkeypatch, heavyball)
    worst = _compare(monkeypatch, heavyball, momentum=True)
    print(f"\npsgd_kron all_diag, momentum 0.9 vs heavyball PSGDKron: max abs diff {worst:.1e}")
    assert worst < 1e-7


def test_one_triangular_update_matches_up_to_the_normaliser(heavyball) -> None:
    """One EQ update of two triangular factors from the same ``Q`` and ``(V, H)``: heavyball's
    ``psgd_update_precond`` (balancing first, a fresh running bound) and ours
    (``balance_``, ``whitening_pair``, ``update_factors_``) differ only by their step
    normalisers: ``dQ_ours * lb_ours == dQ_heavyball * ell_heavyball``."""
    hu = heavyball.utils
    gen = torch.Generator().manual_seed(0)
    m, n, dtype = 5, 7, torch.float64

    def factor(k: int) -> torch.Tensor:
        noise = 0.3 * torch.triu(torch.randn(k, k, generator=gen, dtype=dtype))
        return noise + torch.eye(k, dtype=dtype)

    ql, qr = factor(m), factor(n)
    h = torch.randn(m, n, generator=gen, dtype=dtype)
    v = torch.randn(m, n, generator=gen, dtype=dtype)
    theirs = [ql.clone()[None], qr.clone()[None]]  # heavyball's factors carry a batch dimension
    bounds = [torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=dtype)]
    hu.psgd_update_precond(
        h[None].clone(), 0.1, theirs, False, 0.0, v[None].clone(), bounds, 0.0, 2
    )
    ours = [ql.clone(), qr.clone()]
    balance_(*ours)
    before = [q.clone() for q in ours]
    a, b = whitening_pair(*ours, h, v)
    update_factors_(*ours, a, b, 0.1)
    for side, (mine, q0, other, bound) in enumerate(zip(ours, before, theirs, bounds, strict=True)):
        t1, t2 = _side_terms(a, b, side, True)
        ell_ours = spectral_norm_lower_bound(t1 + t2)
        # heavyball's running bound, fresh: its estimate of this step's T1 + T2 (einsum-made)
        ell_theirs = hu.max_eigenvalue_spd(t1 + t2, 2).reshape(1)
        torch.testing.assert_close(bound, ell_theirs, rtol=1e-12, atol=0)
        torch.testing.assert_close(
            (mine - q0) * ell_ours, (other[0] - q0) * bound, rtol=1e-10, atol=1e-12
        )
        assert not torch.allclose(mine, other[0], rtol=1e-8, atol=0)  # the normalisers differ
