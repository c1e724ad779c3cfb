"""The non-finite check's fast paths (sums of squares by dot products, or multi-tensor norms)
agree with the exact one (min and max) on every dtype, layout and kind of bad value, including
sums that overflow while no entry does."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthoptim.nonfinite import all_finite, exact_fault, suspect

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
BAD = [float("nan"), float("inf"), -float("inf"), 2e19, -2e19, 1e155, 7e4]


@given(
    dtype=st.sampled_from(DTYPES),
    n=st.integers(min_value=1, max_value=5000),
    bad=st.one_of(st.none(), st.sampled_from(BAD)),
    position=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    scale=st.sampled_from([1e-3, 1.0, 1e17, 1e18]),
    transposed=st.booleans(),
    multi_tensor=st.booleans(),
)
def test_fast_check_agrees_with_the_exact_one(
    dtype, n, bad, position, scale, transposed, multi_tensor
) -> None:
    g = (torch.randn(n, 2, dtype=torch.float64) * scale).to(dtype)
    if bad is not None:
        # cast as a gradient would be: 1e155 is Inf in float32, 7e4 Inf in float16
        g.view(-1)[int(position * g.numel())] = torch.tensor(bad, dtype=torch.float64).to(dtype)
    if transposed:  # non-contiguous
        g = g.t()
    assert all_finite([g], multi_tensor) == (not bool(exact_fault([g])))
    if not suspect([g], multi_tensor):  # a proof of fine-ness must be right
        assert not exact_fault([g])


@pytest.mark.parametrize("multi_tensor", [False, True])
def test_ordinary_gradients_are_proven_fine_without_the_exact_check(multi_tensor) -> None:
    # the common case is one host read: the fast path alone decides
    grads = [torch.randn(64, 32), torch.randn(7), torch.randn(5, 3).t(), torch.randn(9).double()]
    grads.append(torch.randn(16).bfloat16())
    assert not bool(suspect(grads, multi_tensor))


def test_a_sum_of_squares_that_overflows_is_not_a_fault() -> None:
    # Every square fits float32, their sum does not: the fast path defers to the exact check.
    g = torch.full((1000,), 1.5e19)
    assert not torch.dot(g, g).isfinite()
    assert all_finite([g])
    g[500] = 2e19  # this square overflows
    assert not all_finite([g])


@pytest.mark.parametrize("multi_tensor", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2e19])
def test_one_bad_entry_among_many_gradients_is_found(bad, multi_tensor) -> None:
    grads = [torch.randn(64, 32) for _ in range(10)]
    assert all_finite(grads, multi_tensor)
    grads[7][13, 5] = bad
    assert not all_finite(grads, multi_tensor)
    assert all_finite(grads[:7] + grads[8:], multi_tensor)
