"""functional.sharpness against the formulas written on one flat vector (float64)."""

from __future__ import annotations

import pytest
import torch

from orthoptim.functional.sharpness import (
    fd_gradreg_gradient,
    gam_direction,
    global_norm,
    orthogonal_part,
    perturbation,
    perturbed,
    shifted,
)

SHAPES = [(4, 3), (5,), (2, 3, 2)]


def tensors(seed: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]


def flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in ts])


def test_global_norm_is_the_norm_of_the_concatenation() -> None:
    ts, ws = tensors(0), tensors(1)
    assert torch.allclose(global_norm(ts), flat(ts).norm(), rtol=1e-15, atol=0)
    weighted = global_norm(ts, [w.abs() for w in ws])
    assert torch.allclose(weighted, (flat(ts) * flat(ws).abs()).norm(), rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="at least one"):
        global_norm([])


@pytest.mark.parametrize("adaptive", [False, True])
def test_perturbation_is_sam_or_asam(adaptive: bool) -> None:
    g, w = tensors(2), tensors(3)
    e = perturbation(g, w, radius=0.05, adaptive=adaptive, eps=1e-12)
    fg, fw = flat(g), flat(w)
    t = fw.abs() if adaptive else torch.ones_like(fw)
    expected = 0.05 * t * t * fg / ((t * fg).norm() + 1e-12)
    assert torch.allclose(flat(e), expected, rtol=1e-14, atol=0)
    # The step has length radius in the metric T^-1 (ASAM's ||T^-1 e|| = rho).
    assert torch.allclose((flat(e) / t).norm(), torch.tensor(0.05, dtype=torch.float64))


@pytest.mark.parametrize("adaptive", [False, True])
def test_perturbed_points_are_the_parameters_plus_the_perturbation(adaptive: bool) -> None:
    g, w = tensors(2), tensors(3)
    points = perturbed(w, g, radius=0.05, adaptive=adaptive, eps=1e-12)
    e = perturbation(g, w, radius=0.05, adaptive=adaptive, eps=1e-12)
    for x, p, d in zip(points, w, e, strict=True):
        torch.testing.assert_close(x, p + d, rtol=0, atol=1e-16)
    for x, p, gi in zip(shifted(w, g, -0.5), w, g, strict=True):
        torch.testing.assert_close(x, p - 0.5 * gi, rtol=0, atol=1e-16)


def test_perturbation_of_a_zero_gradient_is_zero() -> None:
    zeros = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    e = perturbation(zeros, tensors(0), radius=0.05, adaptive=False, eps=1e-12)
    assert all(torch.equal(x, torch.zeros_like(x)) for x in e)


def test_perturbation_of_16_bit_tensors_keeps_their_dtype() -> None:
    g, w = tensors(2, torch.bfloat16), tensors(3, torch.bfloat16)
    e = perturbation(g, w, radius=0.05, adaptive=True, eps=1e-12)
    assert all(x.dtype == torch.bfloat16 for x in e)
    points = shifted(w, e)
    assert all(p.dtype == torch.bfloat16 for p in points)


def test_orthogonal_part_is_the_projection_residual() -> None:
    h, onto = tensors(4), tensors(5)
    perp = orthogonal_part(h, onto, eps=1e-12)
    fh, fo = flat(h), flat(onto)
    expected = fh - (fh @ fo) / (fo @ fo) * fo
    assert torch.allclose(flat(perp), expected, rtol=1e-10, atol=1e-12)
    assert abs(float(flat(perp) @ fo)) < 1e-12


def test_gam_direction_is_algorithm_2() -> None:
    g0, g1, g2, g3 = (tensors(10 + i) for i in range(4))
    out = gam_direction(g0, g1, g2, g3, alpha=0.3, beta=0.6, gamma=0.2, eps=1e-12)
    hp = 0.3 * flat(g1) + 0.7 * flat(g3)
    hm = 0.6 * flat(g0) + 0.4 * flat(g2)
    perp = hm - (hm @ hp) / (hp @ hp) * hp
    assert torch.allclose(flat(out), hp - 0.2 * perp, rtol=1e-10, atol=1e-12)


def test_gam_direction_in_place_is_the_same_and_writes_only_g2_g3() -> None:
    g0, g1, g2, g3 = (tensors(10 + i) for i in range(4))
    keep = [[t.clone() for t in g] for g in (g0, g1, g2, g3)]
    pure = gam_direction(g0, g1, g2, g3, alpha=0.3, beta=0.6, gamma=0.2, eps=1e-12)
    out = gam_direction(g0, g1, g2, g3, alpha=0.3, beta=0.6, gamma=0.2, eps=1e-12, overwrite=True)
    assert all(torch.equal(a, b) for a, b in zip(pure, out, strict=True))
    assert all(x is y for x, y in zip(out, g3, strict=True))
    for now, before in zip((g0, g1), keep[:2], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(now, before, strict=True))


def test_gam_direction_of_overflowing_gradients_stays_finite_and_of_nan_is_nan() -> None:
    # Squares beyond float32's range: the projection's inf / inf is taken as 0, so the shell's
    # check sees the finite (huge) estimate and names the overflowing gradient.
    huge = [t * 1e30 for t in tensors(1, torch.float32)]
    out = gam_direction(huge, huge, huge, huge, alpha=0.5, beta=0.5, gamma=0.03, eps=1e-12)
    assert all(torch.isfinite(t).all() for t in out)
    bad = tensors(1, torch.float32)
    bad[0][0, 0] = float("nan")
    out = gam_direction(bad, bad, bad, bad, alpha=0.5, beta=0.5, gamma=0.03, eps=1e-12)
    assert torch.isnan(out[0]).any()


def test_gam_direction_without_gamma_is_the_weighted_perturbed_gradient() -> None:
    g0, g1, g2, g3 = (tensors(10 + i) for i in range(4))
    out = gam_direction(g0, g1, g2, g3, alpha=1.0, beta=0.5, gamma=0.0, eps=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(out, g1, strict=True))


def _quadratic(seed: int):
    g = torch.Generator().manual_seed(seed)
    n = 7
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = a @ a.T + torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return a, b


@pytest.mark.parametrize("step", [0.3, -0.3, 1e-3])
def test_fd_gradreg_is_exact_on_a_quadratic(step: float) -> None:
    # L = w'Aw/2 + b'w: grad L(w + s g) - g = s A g exactly, so both differences give the GR
    # gradient g + gamma A g for any step.
    a, b = _quadratic(0)
    w = torch.randn(7, dtype=torch.float64)
    g = a @ w + b
    at_shift = a @ (w + step * g) + b
    out = fd_gradreg_gradient([g], [at_shift], gamma=0.05, step=step)[0]
    assert torch.allclose(out, g + 0.05 * a @ g, rtol=1e-12, atol=1e-12)


def test_fd_gradreg_converges_to_the_double_backward_gradient_at_first_order() -> None:
    # A non-quadratic loss: the error of the forward difference shrinks linearly with the step.
    torch.manual_seed(0)
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, dtype=torch.float64)
    w0 = torch.randn(4, dtype=torch.float64)

    def loss(w: torch.Tensor) -> torch.Tensor:
        return torch.mean((torch.tanh(x @ w) - y) ** 2)

    def grad(w: torch.Tensor) -> torch.Tensor:
        w = w.detach().requires_grad_()
        return torch.autograd.grad(loss(w), w)[0]

    gamma = 0.1
    w = w0.clone().requires_grad_()
    g = torch.autograd.grad(loss(w), w, create_graph=True)[0]
    hg = torch.autograd.grad(g, w, grad_outputs=g.detach())[0]
    exact = g.detach() + gamma * hg
    errors = []
    for step in (1e-2, 5e-3, 2.5e-3):
        gd = g.detach()
        out = fd_gradreg_gradient([gd], [grad(w0 + step * gd)], gamma=gamma, step=step)[0]
        errors.append(float((out - exact).norm()))
    assert errors[0] < 1e-3
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), (errors, ratios)
