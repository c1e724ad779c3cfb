"""Low-rank projections: the DCT-II basis against its cosine formula, alignment selection, SVD,
random and block subspaces, projecting down and up, moment rotation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthoptim.functional.projection import (
    basis_columns,
    choose_subspace,
    dct_basis,
    oriented,
    project_down,
    project_up,
    random_block,
    random_columns,
    rotate_moments,
    subspace_rank,
    svd_columns,
    to_device,
    top_aligned_columns,
)


def cosine_formula(n: int) -> list[list[float]]:
    """DCT-II, orthonormal, written out element by element (Ahmed, Natarajan & Rao 1974):
    ``B[j][k] = sqrt(c_k / n) cos(pi (2j + 1) k / (2n))`` with ``c_0 = 1``, ``c_k = 2``."""
    return [
        [
            math.sqrt((1.0 if k == 0 else 2.0) / n) * math.cos(math.pi * (2 * j + 1) * k / (2 * n))
            for k in range(n)
        ]
        for j in range(n)
    ]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_dct_basis_equals_the_cosine_formula(n) -> None:
    basis = dct_basis(n, dtype=torch.float64)
    expected = torch.tensor(cosine_formula(n), dtype=torch.float64)
    assert (basis - expected).abs().max().item() < 1e-15


@pytest.mark.parametrize("n", [1, 2, 7, 16, 64, 100])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dct_basis_is_orthonormal(n, dtype) -> None:
    basis = dct_basis(n, dtype=dtype)
    eye = torch.eye(n, dtype=dtype)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert (basis.mT @ basis - eye).abs().max().item() < tol
    assert (basis @ basis.mT - eye).abs().max().item() < tol


def test_dct_basis_first_column_is_constant_and_cache_is_keyed_by_dtype() -> None:
    basis = dct_basis(9, dtype=torch.float64)
    assert torch.allclose(basis[:, 0], torch.full((9,), 1 / 3, dtype=torch.float64))
    assert dct_basis(9, dtype=torch.float64) is basis  # built once
    assert dct_basis(9, dtype=torch.float32).dtype == torch.float32


def test_alignment_selection_finds_the_planted_columns() -> None:
    n, planted = 16, [11, 2, 7]
    basis = dct_basis(n, dtype=torch.float64)
    left = torch.randn(20, 3, dtype=torch.float64)
    # x is built from three basis columns with decreasing weight, plus small noise.
    x = sum(
        w * torch.outer(left[:, i], basis[:, k])
        for i, (w, k) in enumerate(zip([9, 5, 3], planted, strict=True))
    )
    x = x + 1e-3 * torch.randn(20, n, dtype=torch.float64)
    assert top_aligned_columns(x, basis, 3).tolist() == sorted(planted)


@given(
    rows=st.integers(1, 12),
    n=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    frac=st.floats(0.05, 1.0),
)
def test_alignment_selection_is_the_top_r_of_column_norms(rows, n, seed, frac) -> None:
    x = torch.randn(rows, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    basis = dct_basis(n, dtype=torch.float64)
    r = subspace_rank(n, frac)
    norms = [math.sqrt(sum(float(x[i] @ basis[:, k]) ** 2 for i in range(rows))) for k in range(n)]
    chosen = top_aligned_columns(x, basis, r).tolist()
    assert len(set(chosen)) == r
    assert min(norms[k] for k in chosen) >= max(
        (norms[k] for k in range(n) if k not in chosen), default=-1.0
    )


def test_svd_columns_span_the_top_right_singular_subspace() -> None:
    x = torch.randn(30, 10, dtype=torch.float64)
    p = svd_columns(x, 4)
    _, eigvecs = torch.linalg.eigh(x.mT @ x)  # ascending
    top = eigvecs[:, -4:]
    assert (p.mT @ p - torch.eye(4, dtype=torch.float64)).abs().max() < 1e-12
    assert (p @ p.mT - top @ top.mT).abs().max() < 1e-10


def test_random_subspaces_are_orthonormal_and_reproducible() -> None:
    p = random_columns(12, 5, torch.Generator().manual_seed(3), torch.float64)
    again = random_columns(12, 5, torch.Generator().manual_seed(3), torch.float64)
    assert torch.equal(p, again)
    assert (p.mT @ p - torch.eye(5, dtype=torch.float64)).abs().max() < 1e-13
    idx = random_block(12, 5, torch.Generator().manual_seed(3))
    assert idx.tolist() == sorted(set(idx.tolist())) and len(idx) == 5 and idx.max() < 12
    assert torch.equal(idx, random_block(12, 5, torch.Generator().manual_seed(3)))


def test_random_subspaces_are_made_on_the_target_device() -> None:
    """The draw stays on the CPU (same seed, same draw) but the QR and the result are on the
    target device: on ``meta`` no value can come back to the host, and the shapes still hold."""
    p = random_columns(12, 5, torch.Generator().manual_seed(3), torch.float32, "meta")
    assert p.device.type == "meta" and p.shape == (12, 5) and p.dtype == torch.float32
    idx = random_block(12, 5, torch.Generator().manual_seed(3), "meta")
    assert idx.device.type == "meta" and idx.shape == (5,)
    x = torch.arange(3.0)
    assert to_device(x, "cpu") is x


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_subspaces_on_cuda_equal_the_cpu_ones() -> None:
    """Same seed, same subspace: indices exactly, the orthonormal matrix to float64 round-off
    (cuSOLVER's QR against LAPACK's), after a pinned, non-blocking copy of the draw."""
    cpu = random_columns(64, 9, torch.Generator().manual_seed(5), torch.float64)
    cuda = random_columns(64, 9, torch.Generator().manual_seed(5), torch.float64, "cuda")
    assert cuda.device.type == "cuda"
    assert (cuda.cpu() - cpu).abs().max() < 1e-12
    idx = random_block(64, 9, torch.Generator().manual_seed(5))
    assert torch.equal(random_block(64, 9, torch.Generator().manual_seed(5), "cuda").cpu(), idx)


@pytest.mark.parametrize("kind", ["dct", "block"])
def test_index_projections_match_their_explicit_matrices(kind) -> None:
    x = torch.randn(9, 7, dtype=torch.float64)
    idx = torch.tensor([5, 0, 3])
    p = basis_columns(kind, 7, idx, dtype=torch.float64, device=x.device)
    assert (p.mT @ p - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-13
    low = project_down(x, basis=p)
    if kind == "block":
        assert torch.equal(project_down(x, indices=idx), low)
        assert torch.equal(project_up(low, 7, indices=idx), project_up(low, 7, basis=p))
    residual = x - project_up(low, 7, basis=p)
    assert (residual @ p).abs().max() < 1e-13  # the residual is orthogonal to the subspace


def test_full_rank_projection_is_lossless_and_orientation_is_the_short_side() -> None:
    x = torch.randn(5, 8, dtype=torch.float64)
    assert oriented(x).shape == (8, 5) and oriented(x.mT).shape == (8, 5)
    basis = dct_basis(5, dtype=torch.float64)
    y = oriented(x)
    assert (project_up(project_down(y, basis=basis), 5, basis=basis) - y).abs().max() < 1e-13
    assert (
        subspace_rank(5, 1.0) == 5 and subspace_rank(5, 0.01) == 1 and subspace_rank(8, 0.25) == 2
    )


def test_rotate_moments_carries_kept_columns_and_keeps_v_nonnegative() -> None:
    eye = torch.eye(6, dtype=torch.float64)
    old, new = eye[:, [1, 4, 5]], eye[:, [4, 2, 1]]
    m = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    v = torch.tensor([[4.0, 5.0, 6.0]], dtype=torch.float64)
    rotate_moments(m, v, old, new)
    # Column 4 (was position 1) moves to position 0, column 1 (was 0) to 2, column 2 is new.
    assert m.tolist() == [[2.0, 0.0, 1.0]] and v.tolist() == [[5.0, 0.0, 4.0]]
    basis = dct_basis(6, dtype=torch.float64)
    v2 = torch.rand(3, 3, dtype=torch.float64)
    rotate_moments(torch.zeros(3, 3, dtype=torch.float64), v2, basis[:, :3], basis[:, 1:4])
    assert (v2 >= 0).all()


@pytest.mark.parametrize("projection", ["dct", "svd"])
def test_choose_subspace_ignores_the_gradient_scale(projection) -> None:
    x = torch.randn(9, 6)
    gen = torch.Generator()
    reference = choose_subspace(projection, x, 2, gen)
    for magnitude in (1e-30, 1e15):  # 1e-30: squares underflow in float32 without the rescale
        chosen = choose_subspace(projection, x * magnitude, 2, gen)
        if projection == "dct":
            assert torch.equal(chosen, reference)
        else:
            assert (chosen @ chosen.mT - reference @ reference.mT).abs().max() < 1e-5
    zero = choose_subspace(projection, torch.zeros(9, 6), 2, gen)
    assert torch.isfinite(zero).all()
