"""``functional.kron``'s guards against non-finite factors, selected on the device, equal the
old Python branches (``if not torch.isfinite(a).all()``) bit for bit, finite or not."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from orthoptim.functional.kron import eigenbasis, inverse_root, refresh_basis


def old_inverse_root(a: Tensor, root: float, eps: float) -> Tensor:
    if not torch.isfinite(a).all():
        return torch.zeros_like(a)
    w, v = torch.linalg.eigh(a)
    return (v * (w.clamp_min(0.0) + eps).pow(-1.0 / root)) @ v.mT


def old_eigenbasis(a: Tensor) -> Tensor:
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    if not torch.isfinite(a).all():
        return eye
    return torch.linalg.eigh(a + 1e-30 * eye)[1].flip(1)


def old_refresh_basis(a: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    if not torch.isfinite(a).all():
        return q.clone(), torch.arange(q.shape[1], device=q.device)
    aq = a @ q
    order = torch.argsort((q * aq).sum(dim=0), descending=True)
    return torch.linalg.qr(aq.index_select(1, order))[0], order


def factors(dtype: torch.dtype) -> list[Tensor]:
    """PSD factors (full rank, rank-deficient, zero) and broken ones (Inf, NaN)."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    low = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    out = [g @ g.mT, low @ low.mT, torch.zeros(6, 6, dtype=torch.float64)]
    for bad in (math.inf, -math.inf, math.nan):
        broken = (g @ g.mT).clone()
        broken[1, 2] = bad
        out.append(broken)
    return [a.to(dtype) for a in out]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_guards_equal_the_branchy_guards(dtype) -> None:
    q = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))[0]
    q = q.to(dtype)
    finite = 0
    for a in factors(dtype):
        finite += bool(torch.isfinite(a).all())
        for root in (2.0, 4.0):
            assert torch.equal(inverse_root(a, root, 1e-6), old_inverse_root(a, root, 1e-6))
        assert torch.equal(eigenbasis(a), old_eigenbasis(a))
        got, expected = refresh_basis(a, q), old_refresh_basis(a, q)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert finite == 3  # both sides of every guard
