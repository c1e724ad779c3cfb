"""DeepZero's zeroth-order maths (``functional.deepzero``): CGE against exact gradients, RGE and
ZO-GraSP against loops written from the reference's algorithm (OPTML-Group/DeepZero@5cf30b1
``algorithm/zoo/gradient_estimate.py``, ``algorithm/prune/importance_scores.py``), and the
masks' counts."""

from __future__ import annotations

import pytest
import torch

from orthoptim.functional.deepzero import (
    coordinate_estimate,
    keep_largest,
    kept_indices,
    random_estimate,
    random_mask,
    shuffled,
    zo_grasp_scores,
)

F64 = torch.float64


def _quadratic(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=F64)
    a = m @ m.T / n + torch.eye(n, dtype=F64)
    b = torch.randn(n, generator=g, dtype=F64)
    x = torch.randn(n, generator=g, dtype=F64)
    return a, b, x


def test_cge_is_exact_for_a_linear_loss_on_the_kept_coordinates_and_zero_elsewhere() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 5, generator=g, dtype=F64)
    x = torch.randn(4, 5, generator=g, dtype=F64)
    calls = []

    def f(t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return (a * t).sum() + 3.0

    kept = torch.tensor([0, 3, 7, 19])
    before = x.clone()
    est = coordinate_estimate(f, x, kept, 1e-3)
    expected = torch.zeros(20, dtype=F64)
    expected[kept] = a.reshape(-1)[kept]
    assert torch.allclose(est.reshape(-1), expected, rtol=0, atol=1e-10)
    assert len(calls) == len(kept) + 1  # one per coordinate and the base
    assert torch.equal(x, before)  # the point is left as it was


def test_cge_on_a_quadratic_errs_by_mu_half_the_diagonal_and_converges_as_mu_shrinks() -> None:
    """``(f(x + mu e_i) - f(x)) / mu = (Ax + b)_i + mu A_ii / 2`` exactly for a quadratic."""
    a, b, x = _quadratic(12)

    def f(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * t @ a @ t + b @ t

    exact = a @ x + b
    every = torch.arange(12)
    errors = []
    for mu in (1e-1, 1e-2, 1e-3):
        est = coordinate_estimate(f, x, every, mu, base=f(x))
        assert torch.allclose(est - exact, mu * torch.diagonal(a) / 2, rtol=1e-6, atol=1e-9)
        errors.append(float((est - exact).norm()))
    assert errors[0] / errors[1] == pytest.approx(10, rel=1e-4)
    assert errors[1] / errors[2] == pytest.approx(10, rel=1e-3)


def test_cge_without_coordinates_is_zero_and_evaluates_nothing() -> None:
    calls = []

    def f(t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return t.sum()

    x = torch.ones(3)
    est = coordinate_estimate(f, x, torch.zeros(0, dtype=torch.long), 0.1, base=torch.tensor(3.0))
    assert torch.equal(est, torch.zeros(3)) and not calls


def _reference_rge(f, xs, samples, mu, generator):
    """The reference's ``rge`` as a plain loop: per sample a unit (+1e-8) Gaussian direction
    per tensor, all moved together by ``mu``; ``g += mu u (f(x + mu u) - f(x)) / mu / q``."""
    base = f(xs)
    grads = None
    for _ in range(samples):
        perturbs = []
        for x in xs:
            u = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            u = u / (u.norm() + 1e-8)
            perturbs.append(u * mu)
        derivative = (f([x + d for x, d in zip(xs, perturbs, strict=True)]) - base) / mu
        terms = [d * derivative / samples for d in perturbs]
        grads = terms if grads is None else [a + t for a, t in zip(grads, terms, strict=True)]
    return grads


def _two_layer_loss(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(16, 5, generator=g, dtype=F64)
    targets = torch.randn(16, 2, generator=g, dtype=F64)
    w1 = torch.randn(4, 5, generator=g, dtype=F64) / 2
    w2 = torch.randn(2, 4, generator=g, dtype=F64) / 2

    def f(ws):
        return ((torch.tanh(inputs @ ws[0].T) @ ws[1].T - targets) ** 2).mean()

    return f, [w1, w2]


def test_rge_matches_the_reference_loop() -> None:
    f, ws = _two_layer_loss()
    ours = random_estimate(f, ws, 7, 5e-3, torch.Generator().manual_seed(4))
    theirs = _reference_rge(f, ws, 7, 5e-3, torch.Generator().manual_seed(4))
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_rge_points_along_the_gradient_with_many_samples() -> None:
    """Not only a transcription: with the reference's scale (``E[u u^T] = I / d`` per tensor,
    times ``mu``) the estimate is ``mu / d`` times the gradient on average."""
    f, ws = _two_layer_loss()
    exact = torch.func.grad(lambda a, b: f([a, b]), argnums=(0, 1))(*ws)
    est = random_estimate(f, ws, 4000, 1e-4, torch.Generator().manual_seed(0))
    for e, x, t in zip(est, ws, exact, strict=True):
        cosine = float((e * t).sum() / (e.norm() * t.norm()))
        assert cosine > 0.9
        assert float(e.norm() / (1e-4 / x.numel() * t.norm())) == pytest.approx(1, rel=0.2)


def test_zo_grasp_scores_match_the_reference_loop() -> None:
    """``-w * (RGE(w + mu g0) - g0) / mu``, the second RGE drawing after the first."""
    f, ws = _two_layer_loss()
    ours = zo_grasp_scores(f, ws, 5, 5e-3, torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    g0 = _reference_rge(f, ws, 5, 5e-3, gen)
    g1 = _reference_rge(f, [w + 5e-3 * g for w, g in zip(ws, g0, strict=True)], 5, 5e-3, gen)
    for s, w, a, b in zip(ours, ws, g1, g0, strict=True):
        assert torch.allclose(s, -w * (a - b) / 5e-3, rtol=1e-9, atol=1e-12)


def test_global_magnitude_pruning_keeps_the_largest_scores_over_all_tensors() -> None:
    scores = [torch.tensor([[0.1, -5.0], [0.3, 0.2]]), torch.tensor([4.0, -0.05, 3.0, 0.0])]
    masks = keep_largest(scores, sparsity=0.5)  # 8 entries: keep 4
    assert masks[0].tolist() == [[False, True], [True, False]]
    assert masks[1].tolist() == [True, False, True, False]
    assert sum(int(m.sum()) for m in keep_largest(scores, 0.0)) == 8


def test_masks_keep_their_counts_and_draw_from_the_generator_only() -> None:
    m = random_mask((6, 10), 0.75, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert int(m.sum()) == 15 and m.dtype == torch.bool
    again = random_mask((6, 10), 0.75, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(m, again)
    s = shuffled(m, torch.Generator().manual_seed(1))
    assert int(s.sum()) == 15 and not torch.equal(s, m)
    assert torch.equal(s, shuffled(m, torch.Generator().manual_seed(1)))
    assert torch.equal(kept_indices(m), m.reshape(-1).nonzero().view(-1))


def test_the_realized_step_is_the_secant_slope_and_at_least_one_ulp() -> None:
    """Float64: ``(f(x + h e_i) - f(x)) / h`` with ``h = fl(x_i + mu) - x_i`` is
    ``(Ax + b)_i + h A_ii / 2`` exactly; bfloat16 at ``|x_i| >= 2``: ``h`` is one ulp."""
    a, b, x = _quadratic(6)
    every = torch.arange(6)

    def f(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * t @ a @ t + b @ t

    est = coordinate_estimate(f, x, every, 1e-2, realized=True)
    h = (x + 1e-2) - x
    assert torch.allclose(est, a @ x + b + h * torch.diagonal(a) / 2, rtol=1e-9, atol=1e-12)

    w = torch.tensor([2.5, -3.0, 1.0], dtype=torch.bfloat16)
    slope = torch.tensor([0.5, -2.0, 3.0])

    def linear(t: torch.Tensor) -> torch.Tensor:
        return (t.float() * slope).sum()

    nominal = coordinate_estimate(linear, w, torch.arange(3), 5e-3)
    realized = coordinate_estimate(linear, w, torch.arange(3), 5e-3, realized=True)
    assert nominal.float()[:2].tolist() == [0.0, 0.0]  # the move rounded back to w
    assert torch.allclose(realized.float(), slope, rtol=1e-2)
