"""orthoptim's ``psgd_kron`` against pytorch-optimizer 4.1.0 ``Kron`` (kron_torch's algorithm).

One fixed gradient sequence (no backprop) goes to ``orthoptim.build("psgd_kron", ...)`` and to
``Kron``; the parameters are compared after every step. The reference draws its probes with the
global ``torch.randn_like``; the test replaces that call by our seeded ``functional.psgd.probe``
for the same step, so both fit the preconditioner to the same pairs. Its balancing draw
(``np.random.random() < balance_prob``) is matched by ``balance_prob`` 0 (never) or 1 (every
update step). Measured max abs differences (torch 2.13.0 CPU, 25 steps, p ~ N(0, 1), lr 1e-2;
re-measure with ``python -m pytest tests/reference/test_psgd_vs_packages.py -q -s``):

| settings                                          | dtype   | max abs diff |
|---------------------------------------------------|---------|--------------|
| defaults (every step an update), no balancing     | float64 | 9.4e-9       |
| defaults (every step an update), no balancing     | float32 | 2.4e-7       |
| annealed counter schedule, balancing every update | float64 | 7.7e-9       |
| annealed counter schedule, balancing every update | float32 | 2.4e-7       |
| diagonal sides (max size 6, each memory_save_mode)| float64 | 9.2e-9 (all_diag: 2.2e-16) |

float64 differs at 1e-8 because the reference runs its triangular solves in float32 whatever
the dtype (with both factors diagonal there is no solve, and the difference is 2e-16).
Shapes (6, 9), (12, 4), (5, 5): both sides triangular, and with ``max_size_triangular=6`` a
diagonal side; (5, 5) checks ``one_diag``'s tie (the columns' side, as the reference).
"""

from __future__ import annotations

import pytest
import torch

import orthoptim
from orthoptim.functional.psgd import probe
from orthoptim.transforms.psgd import PSGDKronPrecondition

pytestmark = pytest.mark.reference

SHAPES = [(6, 9), (12, 4), (5, 5)]
# float64: the reference's triangular solves run in float32 whatever the dtype (1e-8 here);
# float32: a few ulp per step through the solves and the clip.
TOL = {torch.float64: 1e-7, torch.float32: 2e-5}


def _compare(monkeypatch, po, dtype, ours_options, ref_options, steps=25) -> float:
    gen = torch.Generator().manual_seed(0)
    p0 = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(steps)]
    ours = [p.clone().requires_grad_() for p in p0]
    theirs = [torch.nn.Parameter(p.clone()) for p in p0]
    opt = orthoptim.build("psgd_kron", ours, lr=1e-2, **ours_options)
    ref = po.Kron(theirs, lr=1e-2, precondition_dtype=dtype, **ref_options)
    seed = ours_options.get("seed", 0)
    current = {"step": 0}

    def seeded_randn_like(x, dtype=None, **_):
        return probe(tuple(x.shape), seed, current["step"], dtype or x.dtype, x.device)

    monkeypatch.setattr(torch, "randn_like", seeded_randn_like)
    worst = 0.0
    for step, gs in enumerate(grads, start=1):
        current["step"] = step
        for a, b, g in zip(ours, theirs, gs, strict=True):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for a, b in zip(ours, theirs, strict=True):
            worst = max(worst, (a - b).abs().max().item())
    return worst


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_defaults_match_kron(dtype, monkeypatch, pytorch_optimizer) -> None:
    worst = _compare(
        monkeypatch, pytorch_optimizer, dtype, {"balance_prob": 0.0}, {"balance_prob": 0.0}
    )
    print(f"\npsgd_kron defaults vs Kron, {dtype}: max abs diff {worst:.2e}")
    assert worst < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_annealed_counter_and_balancing_match_kron(dtype, monkeypatch, pytorch_optimizer) -> None:
    schedule = {"max_prob": 1.0, "min_prob": 0.2, "decay": 0.3, "flat_start": 4}
    ours = {f"prob_{k.removesuffix('_prob')}": v for k, v in schedule.items()}
    ours["balance_prob"] = 1.0
    prob = pytorch_optimizer.optimizer.psgd.precondition_update_prob_schedule(**schedule)
    ref = {"pre_conditioner_update_probability": prob, "balance_prob": 1.0}
    # The schedule leaves some steps without an update: the counter rule is exercised.
    skipped = [s for s in range(1, 26) if not PSGDKronPrecondition(**ours).updates_at(s)]
    assert skipped
    worst = _compare(monkeypatch, pytorch_optimizer, dtype, ours, ref)
    print(f"\npsgd_kron annealed + balance vs Kron, {dtype}: max abs diff {worst:.2e}")
    assert worst < TOL[dtype]


@pytest.mark.parametrize("mode", ["none", "one_diag", "smart_one_diag", "all_diag"])
def test_diagonal_sides_match_kron(mode, monkeypatch, pytorch_optimizer) -> None:
    options = {"max_size_triangular": 6, "memory_save_mode": mode, "balance_prob": 0.0}
    ref = {"max_size_triangular": 6, "memory_save_mode": None if mode == "none" else mode}
    ref["balance_prob"] = 0.0
    worst = _compare(monkeypatch, pytorch_optimizer, torch.float64, options, ref)
    print(f"\npsgd_kron diagonal ({mode}) vs Kron: max abs diff {worst:.2e}")
    assert worst < TOL[torch.float64]


def test_counter_schedule_matches_kron_over_many_steps(pytorch_optimizer) -> None:
    """The update decisions of the default schedule, replayed as the reference does them
    (its counter, its float32 probability), for the first 5000 steps."""
    schedule = pytorch_optimizer.optimizer.psgd.precondition_update_prob_schedule()
    counter, theirs = 0, []
    for n in range(5000):
        p = schedule(n)
        counter += 1
        hit = bool(p > 0 and counter >= 1 / p)
        theirs.append(hit)
        counter = 0 if hit else counter
    t = PSGDKronPrecondition()
    ours = [t.updates_at(s) for s in range(1, 5001)]
    assert ours == theirs
    assert 100 < sum(ours) < 2000
