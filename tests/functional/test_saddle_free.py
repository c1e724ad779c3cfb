"""functional.saddle_free: Lanczos and the |H|^{-1} direction against explicit Hessians (eigh)."""

from __future__ import annotations

import pytest
import torch

from orthoptim.functional.saddle_free import (
    candidate_directions,
    lanczos,
    saddle_free_direction,
    tridiagonal,
)


def _indefinite(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    evals = torch.linspace(-3.0, 5.0, n, dtype=torch.float64)
    evals[n // 2] = 0.3  # keep every |eigenvalue| away from 0
    return q @ torch.diag(evals) @ q.mT


def _abs_inverse(h: torch.Tensor, g: torch.Tensor, damping: float) -> torch.Tensor:
    evals, q = torch.linalg.eigh(h)
    return q @ ((q.mT @ g) / (evals.abs() + damping))


def _gradient(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_full_krylov_space_gives_the_exact_absolute_newton_step(damping: float) -> None:
    n = 12
    h, g = _indefinite(n, 0), _gradient(n, 1)
    vs, alpha, beta = lanczos(lambda v: h @ v, g, n)
    torch.testing.assert_close(vs @ vs.mT, torch.eye(n, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(tridiagonal(alpha, beta), vs @ h @ vs.mT, atol=1e-10, rtol=0)
    d = saddle_free_direction(vs, alpha, beta, g, damping)
    torch.testing.assert_close(d, _abs_inverse(h, g, damping), atol=1e-9, rtol=1e-9)
    # Newton's step differs wherever an eigenvalue is negative: the test can tell them apart.
    assert not torch.allclose(d, torch.linalg.solve(h, g), atol=1e-3)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_partial_space_equals_the_projected_step_in_any_orthonormal_basis(k: int) -> None:
    n = 20
    h, g = _indefinite(n, 2), _gradient(n, 3)
    krylov = torch.stack([torch.linalg.matrix_power(h, i) @ g for i in range(k)], dim=1)
    w, _ = torch.linalg.qr(krylov)  # another orthonormal basis of span{g, Hg, ..., H^{k-1} g}
    expected = w @ _abs_inverse(w.mT @ h @ w, w.mT @ g, 0.05)
    vs, alpha, beta = lanczos(lambda v: h @ v, g, k)
    d = saddle_free_direction(vs, alpha, beta, g, 0.05)
    torch.testing.assert_close(d, expected, atol=1e-9, rtol=1e-8)


def test_without_reorthogonalisation_small_k_matches_in_float64() -> None:
    n = 30
    h, g = _indefinite(n, 4), _gradient(n, 5)
    full = saddle_free_direction(*lanczos(lambda v: h @ v, g, 5), g, 0.1)
    plain = saddle_free_direction(*lanczos(lambda v: h @ v, g, 5, reorthogonalize="none"), g, 0.1)
    torch.testing.assert_close(plain, full, atol=1e-9, rtol=1e-9)


def test_full_reorthogonalisation_keeps_float32_vectors_orthonormal() -> None:
    n, k = 300, 40
    h, g = _indefinite(n, 6).float(), _gradient(n, 7).float()
    vs, _, _ = lanczos(lambda v: h @ v, g, k)
    gram = vs @ vs.mT
    assert (gram - torch.eye(k)).abs().max() < 1e-5


def test_breakdown_keeps_the_exact_step() -> None:
    # Two distinct eigenvalues: the Krylov space of any g has dimension 2, so Lanczos breaks
    # down after two vectors (beta_2 at rounding level); the later vectors continue from the
    # rounding residual, and the step must still be exact and finite.
    n = 8
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(8)).double())
    h = q @ torch.diag(torch.tensor([-2.0] * 4 + [3.0] * 4, dtype=torch.float64)) @ q.mT
    g = _gradient(n, 9)
    vs, alpha, beta = lanczos(lambda v: h @ v, g, 5)
    assert beta[1].abs() < 1e-12 * beta[0].abs()
    torch.testing.assert_close(vs @ vs.mT, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)
    d = saddle_free_direction(vs, alpha, beta, g, 0.0)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d, _abs_inverse(h, g, 0.0), atol=1e-8, rtol=1e-8)


def test_zero_gradient_gives_a_zero_step() -> None:
    h = _indefinite(6, 10)
    g = torch.zeros(6, dtype=torch.float64)
    d = saddle_free_direction(*lanczos(lambda v: h @ v, g, 3), g, 0.0)
    assert torch.equal(d, torch.zeros(6, dtype=torch.float64))


def test_outside_gradient_adds_the_part_of_g_off_the_space() -> None:
    n = 10
    h, g = _indefinite(n, 11), _gradient(n, 12)
    start = _gradient(n, 13)  # a random start: g is not in the space
    vs, alpha, beta = lanczos(lambda v: h @ v, start, 3)
    drop = saddle_free_direction(vs, alpha, beta, g, 0.1)
    grad = saddle_free_direction(vs, alpha, beta, g, 0.1, outside="gradient")
    off = g - vs.mT @ (vs @ g)
    assert off.norm() > 0.1
    torch.testing.assert_close(grad - drop, off)
    ys, rest = candidate_directions(vs, alpha, beta, g, [0.1, 1.0], outside="gradient")
    torch.testing.assert_close(vs.mT @ ys[:, 0] + rest, grad)


def test_mlp_hessian_oracle_with_full_space() -> None:
    """A small MLP's loss Hessian formed explicitly by torch.autograd.functional.hessian; Lanczos
    runs on double-backward Hessian-vector products, as the estimator does."""
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    shapes = [(4, 3), (4,), (2, 4)]
    sizes = [torch.Size(s).numel() for s in shapes]
    theta = torch.randn(sum(sizes), generator=gen, dtype=torch.float64) * 0.7

    def loss(flat: torch.Tensor) -> torch.Tensor:
        w1, b1, w2 = (t.reshape(s) for t, s in zip(flat.split(sizes), shapes, strict=True))
        return ((torch.tanh(x @ w1.T + b1) @ w2.T - y) ** 2).mean()

    h = torch.autograd.functional.hessian(loss, theta)
    evals = torch.linalg.eigvalsh(h)
    assert evals.min() < 0 < evals.max()  # indefinite: |H| differs from H
    p = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(p), p, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(g, p, grad_outputs=v, retain_graph=True)
        return hv

    n = theta.numel()
    gd = g.detach()
    d = saddle_free_direction(*lanczos(hvp, gd, n), gd, 1e-3)
    torch.testing.assert_close(d, _abs_inverse(h, gd, 1e-3), atol=1e-7, rtol=1e-6)


def test_options_are_validated() -> None:
    h = _indefinite(4, 15)
    g = _gradient(4, 16)
    with pytest.raises(ValueError, match="reorthogonalize must be one of"):
        lanczos(lambda v: h @ v, g, 2, reorthogonalize="partial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"k must be in \[1, n\]"):
        lanczos(lambda v: h @ v, g, 5)
    vs, a, b = lanczos(lambda v: h @ v, g, 2)
    with pytest.raises(ValueError, match="outside must be one of"):
        saddle_free_direction(vs, a, b, g, 0.1, outside="keep")  # type: ignore[arg-type]


def test_exactly_zero_residual_leaves_zero_vectors_without_nan() -> None:
    g = _gradient(5, 17)
    vs, alpha, beta = lanczos(lambda v: torch.zeros_like(v), g, 3)
    assert torch.equal(vs[1:], torch.zeros(2, 5, dtype=torch.float64))
    assert torch.equal(saddle_free_direction(vs, alpha, beta, g, 0.0), torch.zeros_like(g))
    torch.testing.assert_close(saddle_free_direction(vs, alpha, beta, g, 2.0), g / 2.0)
