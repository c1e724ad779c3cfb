"""orthoptim's ``psgd_lra`` against the author's package, psgd_torch==0.6.1 ``LRA``
(``preconditioner_type="whitening"``), on a fixed gradient sequence.

The reference takes a closure; here ``loss = sum <p, g_t>``, so its gradient is the fixed
``g_t``. Its random draws are replaced by ours for the same step: ``torch.randn`` (the
initial ``U``, ``V``: the two halves of our ``N x 2 rank`` draw), ``torch.randn_like`` (the
probe: ``functional.psgd.probe`` of the block) and ``torch.rand`` (its update, balance and
U-or-V draws: our ``host_uniform`` values for the step), so both fit the same pairs.
``blocks="model"`` is compared with one ``LRA`` over all parameters (the reference's use),
``blocks="parameter"`` with one ``LRA`` per parameter. Momentum is 0 (the reference's
default; ours is bias-corrected, the reference's not) and the reference's norm clip is
``clip_rms sqrt(N)``. Measured max abs differences of the parameters (torch 2.13.0 CPU,
25 steps, lr 1e-2, p ~ N(0, 1); re-measure with
``python -m pytest tests/reference/test_psgd_lra_vs_psgd_torch.py -q -s``):

| settings                                    | float64 | float32 |
|---------------------------------------------|---------|---------|
| model block, "2nd" normaliser, no clip      | 2.2e-16 | 2.4e-7  |
| model block, "1st", clip binding (rms 0.3)  | 4.8e-8  | 2.4e-7  |
| parameter blocks, "2nd", balance every step | 2.2e-16 | 2.4e-7  |

The clipped case differs at 5e-8 in float64 because our clip divides by ``rms + 1e-6`` (as
``psgd_kron``'s), the reference by ``norm + tiny``: a relative 1e-6 / rms per step. The
reference's initial scale of ``U``, ``V`` is a float32 value (an integer tensor's square
root): the test feeds it a draw scaled so that its ``U``, ``V`` equal ours.
"""

from __future__ import annotations

import math

import pytest
import torch

import orthoptim
from orthoptim.functional.psgd import BALANCE_STREAM, host_uniform, probe

pytestmark = pytest.mark.reference

SHAPES = [(6, 9), (12, 4), (5, 5)]
RANK = 10
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}
CLIPPED_TOL_FLOAT64 = 2e-7  # the clip's 1e-6 (module docstring)
_UV_STREAM = 2


def _compare(monkeypatch, psgd_torch, dtype, options, steps=25) -> float:
    gen = torch.Generator().manual_seed(0)
    p0 = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(steps)]
    ours = [p.clone().requires_grad_() for p in p0]
    theirs = [p.clone().requires_grad_() for p in p0]
    options = {"clip_rms": 1e6, **options}
    seed, clip = 0, options["clip_rms"]
    balance = options.get("balance_prob", 0.01)
    opt = orthoptim.build("psgd_lra", ours, lr=1e-2, momentum=0.0, **options)

    current = {"step": 0, "rand_calls": 0, "randn_calls": 0}

    groups = [theirs] if options.get("blocks") == "model" else [[p] for p in theirs]
    sizes = [sum(p.numel() for p in group) for group in groups]
    # Drawn before torch.randn is replaced (probe draws with it).
    inits = {n: probe((n, 2 * RANK), seed, 0, dtype, torch.device("cpu")) for n in sizes}

    def fake_randn(*shape, **_):
        n, r = shape
        half = current["randn_calls"] % 2
        current["randn_calls"] += 1
        # The reference divides by (N (r + 10))^0.5 of an integer tensor: a float32 value;
        # the draw is scaled so that its U and V equal ours (our scale is in the factors' dtype).
        f32 = float((n * (r + 10)) ** 0.5) / math.sqrt(int(n) * (r + 10))
        draw = inits[int(n)] * f32
        return draw[:, r:] if half else draw[:, :r]

    def fake_randn_like(x, **_):
        return probe((x.numel(),), seed, current["step"], x.dtype, x.device).reshape(x.shape)

    def fake_rand(*_, **__):
        # Per step and instance: the update draw, then the balance and U-or-V draws.
        k = current["rand_calls"] % 3
        current["rand_calls"] += 1
        step = current["step"]
        if k == 0:
            return torch.tensor(0.0)
        if k == 1:
            # The reference balances at draws below 0.01: ours at draws below balance_prob.
            value = host_uniform(seed, step, BALANCE_STREAM)
            return torch.tensor(0.0 if value < balance else 1.0)
        return torch.tensor(host_uniform(seed, step, _UV_STREAM))

    monkeypatch.setattr(torch, "randn_like", fake_randn_like)
    monkeypatch.setattr(torch, "rand", fake_rand)
    refs = []
    for group, n in zip(groups, sizes, strict=True):
        with monkeypatch.context() as patch:
            patch.setattr(torch, "randn", fake_randn)
            ref = psgd_torch.LRA(
                group,
                rank_of_approximation=RANK,
                lr_params=1e-2,
                lr_preconditioner=0.1,
                momentum=0.0,
                grad_clip_max_norm=clip * math.sqrt(n),
                step_normalizer=options.get("step_normalizer", "2nd"),
                preconditioner_type="whitening",
            )
        refs.append(ref)
    worst = 0.0
    for step, gs in enumerate(grads, start=1):
        current["step"] = step
        for a, g in zip(ours, gs, strict=True):
            a.grad = g.clone()
        opt.step()
        fixed = dict(zip(map(id, theirs), gs, strict=True))
        for ref, group in zip(refs, groups, strict=True):

            def closure(group=group, fixed=fixed):
                return sum((p * fixed[id(p)]).sum() for p in group)

            ref.step(closure)
        for a, b in zip(ours, theirs, strict=True):
            worst = max(worst, (a - b).abs().max().item())
    moved = max((a - p).abs().max().item() for a, p in zip(ours, p0, strict=True))
    assert moved > 1e-2  # the steps are far larger than the tolerance
    return worst


CASES = {
    "model_2nd": {"blocks": "model"},
    "model_1st_clipped": {"blocks": "model", "step_normalizer": "1st", "clip_rms": 0.3},
    "parameter_balanced": {"blocks": "parameter", "balance_prob": 1.0},
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_psgd_lra_matches_psgd_torch_lra(case, dtype, monkeypatch, psgd_torch) -> None:
    worst = _compare(monkeypatch, psgd_torch, dtype, CASES[case])
    print(f"\npsgd_lra {case} vs psgd_torch LRA, {dtype}: max abs diff {worst:.2e}")
    clipped = "clip_rms" in CASES[case] and dtype == torch.float64
    assert worst < (CLIPPED_TOL_FLOAT64 if clipped else TOL[dtype])
