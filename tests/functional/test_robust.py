"""Robust statistics: the quantile of magnitudes against ``torch.quantile`` (ties included), the
nuclear dual norm against the singular values (low rank included)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthoptim.functional.robust import (
    abs_quantile,
    dkw_epsilon,
    dual_norm,
    sample_indices,
    sampled_abs_quantile,
)

QUANTILES = st.one_of(
    st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.97, 1.0]), st.floats(min_value=0.0, max_value=1.0)
)


@given(
    n=st.integers(min_value=1, max_value=300),
    q=QUANTILES,
    ties=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_abs_quantile_equals_torch_quantile(n: int, q: float, ties: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (n,), generator=g).double() if ties else torch.randn(n, generator=g)
    x = x.double()
    expected = torch.quantile(x.abs(), q)
    torch.testing.assert_close(abs_quantile(x, q), expected, rtol=1e-12, atol=0)


def test_abs_quantile_of_16_bit_input_is_float32_and_of_empty_input_zero() -> None:
    x = torch.tensor([-3.0, 1.0, 2.0, -4.0], dtype=torch.bfloat16)
    out = abs_quantile(x, 0.5)
    assert out.dtype == torch.float32 and out.item() == 2.5
    assert abs_quantile(torch.empty(0), 0.9).item() == 0.0


def test_abs_quantile_beyond_torch_quantile_size_limit_matches_sorting() -> None:
    x = torch.randn(2**24 + 3, generator=torch.Generator().manual_seed(0))
    for q in (0.9, 0.25):
        position = q * (x.numel() - 1)
        lower = int(position)
        ordered = x.abs().sort().values
        expected = torch.lerp(ordered[lower], ordered[lower + 1], position - lower)
        torch.testing.assert_close(abs_quantile(x, q), expected, rtol=0, atol=0)


def test_sampled_abs_quantile_is_exact_up_to_the_sample_size() -> None:
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    for q in (0.5, 0.9):
        assert torch.equal(sampled_abs_quantile(x, q, 4096, step=3), abs_quantile(x, q))
        assert torch.equal(sampled_abs_quantile(x, q, 5000, step=3), abs_quantile(x, q))


def test_sampled_abs_quantile_lies_in_the_dkw_band() -> None:
    """Rows on scales from 1e-3 to 1e3 (so a sample that favoured some rows, e.g. the first
    entries, would land far outside), heavy tails; 4096 samples: the estimate of every one of
    100 steps lies between the exact q - eps and q + eps quantiles, eps from delta = 1e-6."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 600, generator=g) ** 3 * torch.logspace(-3, 3, 400)[:, None]
    k, q = 4096, 0.9
    eps = dkw_epsilon(k, 1e-6)
    assert eps == pytest.approx(0.0420, abs=1e-4)
    assert dkw_epsilon(2**16, 1e-6) == pytest.approx(0.0105, abs=1e-4)
    low, high = abs_quantile(x, q - eps), abs_quantile(x, q + eps)
    estimates = torch.stack([sampled_abs_quantile(x, q, k, step) for step in range(1, 101)])
    assert (estimates >= low).all() and (estimates <= high).all()
    assert estimates.unique().numel() > 90  # each step draws its own sample
    biased = abs_quantile(x.flatten()[:k], q)  # the first rows only: the test can fail
    assert not low <= biased <= high


def test_sample_indices_are_uniform_deterministic_and_in_range() -> None:
    n, k = 1_000_003, 2**16
    cpu = torch.device("cpu")
    a = sample_indices(n, k, 5, cpu)
    assert a.dtype == torch.int64 and a.shape == (k,)
    assert a.min().item() >= 0 and a.max().item() < n
    assert torch.equal(a, sample_indices(n, k, 5, cpu))
    assert not torch.equal(a, sample_indices(n, k, 6, cpu))
    a.zero_()  # a new tensor each call: the cached draw is not written through
    assert sample_indices(n, k, 5, cpu).max().item() > 0
    # 16 equal bins of the range: counts within 5 standard deviations of k/16.
    counts = torch.bincount(sample_indices(n, k, 7, cpu) * 16 // n, minlength=16).double()
    expected = k / 16
    assert ((counts - expected).abs() < 5 * math.sqrt(expected * 15 / 16)).all()


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (16, 16), (6, 4, 3, 3)])
@pytest.mark.parametrize("rank", [1, 3, None])
def test_nuclear_dual_norm_equals_the_sum_of_singular_values(shape, rank) -> None:
    g = torch.Generator().manual_seed(rank or 0)
    rows, cols = shape[0], math.prod(shape[1:])
    if rank is None:
        x = torch.randn(shape, generator=g)
    else:  # low rank: the exact sum has no contribution from the zero singular values
        x = (torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g)).reshape(
            shape
        )
    expected = torch.linalg.svdvals(x.double().reshape(rows, cols)).sum()
    out = dual_norm(x, "nuclear")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=0)
    bf16 = dual_norm(x.bfloat16(), "nuclear")
    assert bf16.dtype == torch.float32
    expected16 = torch.linalg.svdvals(x.bfloat16().double().reshape(rows, cols)).sum()
    torch.testing.assert_close(bf16.double(), expected16, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(256, 64), (64, 256), (64, 64)])
@pytest.mark.parametrize("rank", [1, 4, 32, None])
def test_gram_nuclear_norm_errs_by_at_most_its_stated_bound(shape, rank) -> None:
    """``nuclear="gram"`` (float32 Gram matrix): each zero singular value adds the root of the
    float32 rounding of its eigenvalue, so the error grows as the rank falls; stated bound
    (``nuclear_norm``) 1.5e-2 of the norm at rank 1 on 2048 x 512 (measured here: rank 1
    <= 3.4e-3, full rank <= 5e-7), asserted 2e-2 at low rank and 1e-5 at full rank, never
    below the exact norm by more than the full-rank bound (the clamped roots only add)."""
    g = torch.Generator().manual_seed(rank or 0)
    rows, cols = shape
    if rank is None:
        x = torch.randn(shape, generator=g)
    else:
        x = torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g)
    exact = dual_norm(x, "nuclear")
    gram = dual_norm(x, "nuclear", "gram")
    assert gram.dtype == torch.float32
    error = (gram.double() / exact.double() - 1).item()
    print(f"{shape} rank {rank}: relative error {error:.3g}")
    assert -1e-5 <= error <= (1e-5 if rank is None else 2e-2)
    bf16 = dual_norm(x.bfloat16(), "nuclear", "gram")
    assert bf16.dtype == torch.float32  # the Gram matrix of a 16-bit gradient is in float32
    with pytest.raises(ValueError, match="nuclear_norm must be one of"):
        dual_norm(x, "nuclear", "svd")  # type: ignore[arg-type]
