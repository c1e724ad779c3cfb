"""Property tests of ``newton_schulz``, ``polar_svd`` and ``matrix_view``.

Newton-Schulz maps ``X = U S V^T`` to ``U P(S / (safety * ||X||_F + eps)) V^T`` with ``P`` the
composed odd polynomial of the schedule. Most properties below follow from that form; they are
checked in float64 so the tolerances are round-off, amplified at most by ``max |P'|`` (at the
default steps: about 5e2 for the quintics, 1e3 for modded-nanogpt, 6.3e3 for the paper preset),
i.e. ~1e-12, checked against 1e-9.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthoptim.functional.coefficients import COEFFICIENT_PRESETS, PRESETS
from orthoptim.functional.polar import PRE_NORMS, matrix_view, newton_schulz, polar_svd

ATOL = 1e-9

DIMS = st.integers(1, 48)
SHAPES = st.one_of(
    st.tuples(st.just(1), DIMS),  # 1xN
    st.tuples(DIMS, st.just(1)),  # Nx1
    st.tuples(DIMS, DIMS),  # square, tall and wide
)
LOG_SCALES = st.floats(-3.0, 3.0)  # scale 10**s in 1e-3..1e3
NAMES = st.sampled_from(COEFFICIENT_PRESETS)
SEEDS = st.integers(0, 2**32 - 1)


def gaussian(shape: tuple[int, ...], seed: int, log_scale: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * 10.0**log_scale


def orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def with_spectrum(
    m: int, n: int, seed: int, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U diag(s) V^T, U, V)`` for random orthonormal ``U`` (m x r), ``V`` (n x r), r = len(s)."""
    g = torch.Generator().manual_seed(seed)
    U = orthogonal(m, g)[:, : len(s)]
    V = orthogonal(n, g)[:, : len(s)]
    return (U * s) @ V.T, U, V


def ns(x: torch.Tensor, name: str, steps: int | None = None, **kwargs) -> torch.Tensor:
    preset = PRESETS[name]
    steps = preset.default_steps if steps is None else steps
    return newton_schulz(x, preset.schedule(steps), norm_safety=preset.norm_safety, **kwargs)


@functools.cache
def log_slope(name: str) -> float:
    """``sup |x P'(x)|`` over ``(0, 1]`` for the default schedule: how much a relative change of
    the pre-normalisation scale can move an output singular value."""
    preset = PRESETS[name]
    x = torch.logspace(-12, 0, 200_001, dtype=torch.float64).requires_grad_()
    y = x / preset.norm_safety
    for a, b, c in preset.schedule(preset.default_steps):
        y = a * y + b * y**3 + c * y**5
    (grad,) = torch.autograd.grad(y.sum(), x)
    return (x * grad).abs().max().item()


@given(shape=SHAPES, seed=SEEDS, log_scale=LOG_SCALES, name=NAMES)
def test_transpose_equivariance(shape, seed, log_scale, name) -> None:
    x = gaussian(shape, seed, log_scale)
    y, yt = ns(x, name), ns(x.T, name)
    # A wide matrix iterates on X X^T from the left, its transpose on X^T X from the right: the
    # same polynomial, products in another memory order, so equal up to round-off.
    torch.testing.assert_close(yt, y.T, rtol=0, atol=ATOL)


@given(
    shape=SHAPES,
    seed=SEEDS,
    log_scale=LOG_SCALES,
    log_c=st.floats(-3.0, 3.0),
    name=NAMES,
    pre_norm=st.sampled_from(PRE_NORMS),
)
def test_scale_invariance(shape, seed, log_scale, log_c, name, pre_norm) -> None:
    x, c = gaussian(shape, seed, log_scale), 10.0**log_c
    y, yc = ns(x, name, pre_norm=pre_norm), ns(c * x, name, pre_norm=pre_norm)
    # X and cX share U, V and differ only in the pre-normalised scale: 1/(||X|| + eps) against
    # 1/(||X|| + eps/c) ("frobenius"), 1/max(||X||, eps) against 1/max(||X||, eps/c) ("clamp").
    # Each output singular value P(k s) moves by at most sup|x P'(x)| * |log k1 - log k2|.
    eps, norm = 1e-7, torch.linalg.vector_norm(x).item()
    if pre_norm == "frobenius":
        log_ratio = abs(math.log(norm + eps) - math.log(norm + eps / c))
    else:
        log_ratio = abs(math.log(max(norm, eps)) - math.log(max(norm, eps / c)))
    tol = 1.1 * log_slope(name) * log_ratio + ATOL
    torch.testing.assert_close(yc, y, rtol=0, atol=tol)


@given(shape=SHAPES, seed=SEEDS, log_scale=LOG_SCALES, name=NAMES)
def test_orthogonal_equivariance(shape, seed, log_scale, name) -> None:
    m, n = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=torch.float64) * 10.0**log_scale
    q, r = orthogonal(m, g), orthogonal(n, g)
    y = ns(x, name)
    torch.testing.assert_close(ns(q @ x, name), q @ y, rtol=0, atol=ATOL)
    torch.testing.assert_close(ns(x @ r, name), y @ r, rtol=0, atol=ATOL)


@pytest.mark.parametrize("pre_norm", PRE_NORMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", COEFFICIENT_PRESETS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 9), (9, 5), (6, 6), (2, 3, 4)])
def test_zero_input_maps_to_zero(shape, name, dtype, pre_norm) -> None:
    y = ns(torch.zeros(shape, dtype=dtype), name, pre_norm=pre_norm)
    assert y.shape == shape and y.dtype == dtype
    assert torch.isfinite(y).all()
    assert torch.equal(y, torch.zeros_like(y))


@given(
    shape=SHAPES,
    rank=st.integers(1, 47),
    seed=SEEDS,
    log_scale=LOG_SCALES,
    name=NAMES,
)
def test_rank_deficient_input_keeps_row_and_column_space(
    shape, rank, seed, log_scale, name
) -> None:
    m, n = shape
    rank = min(rank, max(1, min(m, n) - 1))  # rank-1 whenever min(m, n) <= 2
    s = torch.linspace(1.0, 0.5, rank, dtype=torch.float64) * 10.0**log_scale
    x, U, V = with_spectrum(m, n, seed, s)
    y = ns(x, name)
    assert torch.isfinite(y).all()
    sv = torch.linalg.svdvals(y)
    lo, hi = PRESETS[name].band  # sigma_min / ||X||_F >= 0.5 / sqrt(47): inside the band's domain
    assert lo <= sv[:rank].min() and sv[:rank].max() <= hi
    assert torch.all(sv[rank:] <= ATOL)
    # Output rows lie in the input's row space, output columns in its column space.
    torch.testing.assert_close(y @ V @ V.T, y, rtol=0, atol=ATOL)
    torch.testing.assert_close(U @ (U.T @ y), y, rtol=0, atol=ATOL)


@given(shape=SHAPES, seed=SEEDS, log_scale=LOG_SCALES, name=NAMES)
def test_well_conditioned_output_within_band(shape, seed, log_scale, name) -> None:
    # Spectrum in [0.1, 1]: sigma_min / ||X||_F >= 0.1 / sqrt(48), inside the band's domain.
    m, n = shape
    s = torch.linspace(1.0, 0.1, min(m, n), dtype=torch.float64) * 10.0**log_scale
    x, _, _ = with_spectrum(m, n, seed, s)
    sv = torch.linalg.svdvals(ns(x.to(torch.float32), name).to(torch.float64))
    lo, hi = PRESETS[name].band
    assert lo <= sv.min() and sv.max() <= hi


@given(
    batch=st.sampled_from([(1,), (3,), (2, 2)]),
    shape=SHAPES,
    seed=SEEDS,
    log_scale=LOG_SCALES,
    name=NAMES,
)
def test_batched_equals_per_matrix(batch, shape, seed, log_scale, name) -> None:
    x = gaussian((*batch, *shape), seed, log_scale)
    y = ns(x, name)
    assert y.shape == x.shape
    flat_x, flat_y = x.reshape(-1, *shape), y.reshape(-1, *shape)
    for xi, yi in zip(flat_x, flat_y, strict=True):
        # bmm/baddbmm (batch) and mm/addmm (single matrix) may sum in different orders, so the
        # results agree to float64 round-off (~1e-15 measured), not bit for bit.
        torch.testing.assert_close(yi, ns(xi, name), rtol=0, atol=ATOL)


@given(
    shape=SHAPES,
    seed=SEEDS,
    log_scale=LOG_SCALES,
    name=NAMES,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_bfloat16_compute_returns_finite_bfloat16(shape, seed, log_scale, name, dtype) -> None:
    x = gaussian(shape, seed, log_scale).to(dtype)
    y = ns(x, name, compute_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert torch.isfinite(y).all()


@given(
    shape=SHAPES,
    seed=SEEDS,
    log_scale=LOG_SCALES,
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_polar_svd_is_orthonormal(shape, seed, log_scale, dtype) -> None:
    x = gaussian(shape, seed, log_scale).to(dtype)
    q = polar_svd(x).to(torch.float64)
    assert polar_svd(x).dtype == dtype
    m, n = shape
    gram = q.T @ q if m >= n else q @ q.T  # orthonormal columns (tall) or rows (wide)
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(gram, torch.eye(min(m, n), dtype=torch.float64), rtol=0, atol=atol)


@given(shape=SHAPES, seed=SEEDS, log_scale=LOG_SCALES, steps=st.integers(8, 12))
def test_polar_express_paper_approaches_polar_svd(shape, seed, log_scale, steps) -> None:
    m, n = shape
    s = torch.linspace(1.0, 0.1, min(m, n), dtype=torch.float64) * 10.0**log_scale
    x, _, _ = with_spectrum(m, n, seed, s)
    y = ns(x, "polar_express_paper", steps=steps)
    # The last polynomial has 1 as a superattracting fixed point: ~3e-15 measured.
    torch.testing.assert_close(y, polar_svd(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((8, 3, 3, 3), (8, 27)), ((4, 2, 5), (4, 10)), ((6, 7), (6, 7)), ((5, 1, 1, 1), (5, 1))],
)
def test_matrix_view_flattens_as_a_view(shape, expected) -> None:
    x = torch.randn(shape)
    v = matrix_view(x)
    assert v.shape == expected
    assert torch.equal(v, x.reshape(expected))
    assert v.data_ptr() == x.data_ptr()
    v.zero_()  # writes go through to x
    assert torch.equal(x, torch.zeros(shape))
    if x.ndim == 2:
        assert v is x


@pytest.mark.parametrize("fn", [matrix_view, polar_svd, lambda x: ns(x, "keller_quintic")])
@pytest.mark.parametrize("shape", [(), (5,)])
def test_rejects_fewer_than_two_dims(fn, shape) -> None:
    with pytest.raises(ValueError, match="ndim >= 2"):
        fn(torch.zeros(shape))


def test_newton_schulz_rejects_unknown_pre_norm() -> None:
    with pytest.raises(ValueError, match="pre_norm must be one of"):
        ns(torch.ones(3, 4), "keller_quintic", pre_norm="spectral")
