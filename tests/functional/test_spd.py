"""functional.spd: the diagonal structure is the dense update projected onto diagonal factors."""

from __future__ import annotations

import torch

from orthoptim.functional.spd import local_gradients, move_, outer_product, precondition


def test_diagonal_structure_is_the_dense_update_restricted_to_diagonal_factors() -> None:
    g = torch.Generator().manual_seed(0)
    k = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    c = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    a = torch.randn(7, 5, generator=g, dtype=torch.float64)
    b = torch.randn(7, 3, generator=g, dtype=torch.float64)
    s_k, s_c = a.T @ a, b.T @ b
    dense = local_gradients(torch.diag(k), torch.diag(c), s_k, s_c, 0.1, "dense")
    diag = local_gradients(k, c, s_k, s_c, 0.1, "diagonal")
    for full, vec in zip(dense, diag, strict=True):
        assert torch.allclose(full.diagonal(), vec, rtol=1e-13)
    m_dense, m_diag, f_dense, f_diag = torch.zeros(5, 5), torch.zeros(5), torch.diag(k), k.clone()
    move_(f_dense, m_dense.double(), dense[0], 0.5, 0.1, "dense")
    move_(f_diag, m_diag.double(), diag[0], 0.5, 0.1, "diagonal")
    # the dense factor leaves the diagonal (off-diagonal g); its diagonal moves as the vector does
    assert torch.allclose(f_dense.diagonal(), f_diag, rtol=1e-13)
    grad = torch.randn(3, 5, generator=g, dtype=torch.float64)
    p_k, p_c = outer_product(k, "diagonal"), outer_product(c, "diagonal")
    expected = torch.diag(c) ** 2 @ grad @ torch.diag(k) ** 2
    assert torch.allclose(precondition(grad, p_c, p_k, "diagonal"), expected, rtol=1e-13)


def test_a_fixed_point_of_the_dense_update_is_the_damped_kfac_inverse() -> None:
    """Where ``g_K = g_C = 0`` the factors satisfy ``K K^T = (tr(H_C)/d_C S_K + damping
    tr(C^T C)/d_C I)^-1`` (and likewise for ``C``): iterating the update without momentum
    reaches it, no inverse taken."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 4, generator=g, dtype=torch.float64)
    b = torch.randn(40, 3, generator=g, dtype=torch.float64)
    s_k, s_c = a.T @ a / 40, b.T @ b / 40
    k, c = torch.eye(4, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    m_k, m_c = torch.zeros_like(k), torch.zeros_like(c)
    for _ in range(3000):
        g_k, g_c = local_gradients(k, c, s_k, s_c, 0.1, "dense")
        move_(k, m_k, g_k, 0.0, 0.1, "dense")
        move_(c, m_c, g_c, 0.0, 0.1, "dense")
    tr_hc = torch.trace(c.T @ s_c @ c) / 3
    tr_cc = torch.trace(c.T @ c) / 3
    target = torch.linalg.inv(tr_hc * s_k + 0.1 * tr_cc * torch.eye(4, dtype=torch.float64))
    assert torch.allclose(k @ k.T, target, rtol=1e-8, atol=1e-10)
