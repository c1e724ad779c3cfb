"""spd_momentum against SINGD (f-dangel/singd, ``singd==0.0.5``), run on fixed inputs.

Where the structures coincide, SINGD's update is the paper's (arXiv 2302.09738) with constant
``lr_cov`` (``cov_warmup="none"``): dense or diagonal ``K`` and ``C``, ``kfac_like=False``,
``loss_average="batch"``, ``kfac_approx="expand"``, no bias (SINGD joins ``[W | b]``; we route
biases to AdamW). Weight decay applies from the first step on both sides. Trained together from
the same weights and batches; the printed max difference is over the weights after the steps.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn

import orthoptim


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(8, 12, bias=False), nn.Tanh(), nn.Linear(12, 10, bias=False), nn.Tanh(),
        nn.Linear(10, 3),
    ).double()  # fmt: skip
    for p in net[4].parameters():
        p.requires_grad_(False)
    return net


@pytest.mark.parametrize("structure", ["dense", "diagonal"])
@pytest.mark.parametrize("every", [1, 3])
def test_matches_singd(singd: ModuleType, structure: str, every: int) -> None:
    ours_model, theirs_model = model(), model()
    hyper = {"lr": 0.05, "momentum": 0.9, "damping": 1e-2, "weight_decay": 1e-2}
    ours = orthoptim.build(
        "spd_momentum",
        ours_model,
        riemannian_momentum=0.5,
        lr_cov=0.05,
        cov_warmup="none",
        update_every=every,
        structure=structure,
        **hyper,
    )
    theirs = singd.SINGD(
        theirs_model,
        params=[p for p in theirs_model.parameters() if p.requires_grad],
        alpha1=0.5,
        lr_cov=0.05,
        T=every,
        structures=(structure, structure),
        loss_average="batch",
        kfac_approx="expand",
        warn_unsupported=False,
        **hyper,
    )
    g = torch.Generator().manual_seed(3)
    for _ in range(12):
        x = (torch.randn(32, 8, generator=g) * torch.logspace(0, -1, 8) + 0.5).double()
        y = torch.randn(32, 3, generator=g).double()
        for net, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    start = [p.detach() for p in model().parameters()][:2]
    detached = [[p.detach() for p in m.parameters()] for m in (ours_model, theirs_model)]
    pairs = list(zip(*detached, strict=True))[:2]
    diff = max(float((p - q).abs().max()) for p, q in pairs)
    moved = max(float((q - s).abs().max()) for (_, q), s in zip(pairs, start, strict=True))
    print(f"spd_momentum vs SINGD ({structure}, T={every}), 12 steps, float64: "
          f"max |diff| {diff:.1e} (weights moved {moved:.1e})")  # fmt: skip
    assert moved > 1e-3
    assert diff < 1e-12
