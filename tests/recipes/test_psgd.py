"""``psgd_kron``: oracles written from the paper's update rule, the whitening fixed point, the
named options, and convergence on the teacher-student problems.

The oracles build the full Kronecker-product preconditioner ``Q = Q_L kron Q_R`` (row-major
``vec``) with dense matrices and explicit inverses, and take the Lie-group gradient of the
whitening criterion ``c(Q) = ||Q h||^2 + ||Q^{-T} v||^2`` (Li, arXiv 1512.04202, eq. for the
affine group; 2402.11858 sec. 3) by autograd along ``Q_L <- (I + E) Q_L``: independent of the
factored einsum-free formulas of ``functional.psgd``.
"""

from __future__ import annotations

import copy

import pytest
import torch

import orthoptim
from orthoptim._types import State
from orthoptim.bench.speed import ops
from orthoptim.functional.psgd import (
    counter_decision,
    precondition,
    probe,
    spectral_norm_lower_bound,
    update_factors_,
    update_probability,
    upper_product,
    whitening_pair,
)
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.psgd import PSGDKronPrecondition
from tests.recipes.teacher_student import ill_conditioned, random_teacher, train


def _random_factors(m: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    def tri(k: int) -> torch.Tensor:
        noise = 0.3 * torch.randn(k, k, generator=gen, dtype=torch.float64)
        return torch.triu(noise) + torch.eye(k, dtype=torch.float64)

    return tri(m), tri(n)


def test_preconditioner_is_the_kronecker_product() -> None:
    gen = torch.Generator().manual_seed(0)
    ql, qr = _random_factors(4, 3, gen)
    g = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    q = torch.kron(ql, qr)
    dense = (q.T @ q @ g.flatten()).reshape(4, 3)
    torch.testing.assert_close(precondition(ql, qr, g), dense, rtol=1e-12, atol=1e-12)
    # A diagonal factor is the same matrix stored as its diagonal.
    d = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    dense = torch.kron(ql, torch.diag(d)).T @ torch.kron(ql, torch.diag(d)) @ g.flatten()
    torch.testing.assert_close(precondition(ql, d, g), dense.reshape(4, 3), rtol=1e-12, atol=0)


def _lie_gradients(ql, qr, h, v):
    """d c / d E_L and d c / d E_R at 0, for Q_L <- (I + E_L) Q_L, Q_R <- (I + E_R) Q_R."""
    el = torch.zeros_like(ql, requires_grad=True)
    er = torch.zeros_like(qr, requires_grad=True)
    eye_l, eye_r = torch.eye(ql.shape[0], dtype=ql.dtype), torch.eye(qr.shape[0], dtype=qr.dtype)
    q = torch.kron((eye_l + el) @ ql, (eye_r + er) @ qr)
    c = (q @ h.flatten()).square().sum() + (torch.linalg.inv(q).T @ v.flatten()).square().sum()
    return torch.autograd.grad(c, (el, er))


def test_whitening_pair_gives_the_lie_group_gradient() -> None:
    """``A A^T - B B^T`` (and ``A^T A - B^T B``) are half the criterion's relative gradients."""
    gen = torch.Generator().manual_seed(1)
    ql, qr = _random_factors(5, 3, gen)
    h = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    grad_l, grad_r = _lie_gradients(ql, qr, h, v)
    a, b = whitening_pair(ql, qr, h, v)
    torch.testing.assert_close(2 * (a @ a.T - b @ b.T), grad_l, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(2 * (a.T @ a - b.T @ b), grad_r, rtol=1e-9, atol=1e-9)


def test_factor_step_is_the_normalised_triangular_lie_step() -> None:
    """One EQ step: ``Q <- Q - lr triu(grad / 2) Q / ||(A A^T + B B^T)||_lb``; diagonal: the
    gradient's diagonal, normalised by the max of ``diag(A A^T + B B^T)``."""
    gen = torch.Generator().manual_seed(2)
    ql, qr = _random_factors(4, 6, gen)
    h = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    grad_l, grad_r = _lie_gradients(ql, qr, h, v)
    a, b = whitening_pair(ql, qr, h, v)
    sl, sr = a @ a.T + b @ b.T, a.T @ a + b.T @ b
    lr = 0.1
    want_l = ql - lr * torch.triu(grad_l / 2) @ ql / spectral_norm_lower_bound(sl)
    want_r = qr - lr * torch.triu(grad_r / 2) @ qr / spectral_norm_lower_bound(sr)
    got_l, got_r = ql.clone(), qr.clone()
    update_factors_(got_l, got_r, a, b, lr)
    torch.testing.assert_close(got_l, want_l, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_r, want_r, rtol=1e-12, atol=1e-12)
    # A diagonal right factor: the relative gradient restricted to diagonal E_R.
    d = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    grad_l, grad_d = _lie_gradients(ql, torch.diag(d), h, v)
    a, b = whitening_pair(ql, d, h, v)
    got_l, got_d = ql.clone(), d.clone()
    update_factors_(got_l, got_d, a, b, lr)
    want_d = d - lr * torch.diagonal(grad_d / 2) * d / torch.diagonal(a.T @ a + b.T @ b).max()
    torch.testing.assert_close(got_d, want_d, rtol=1e-12, atol=1e-12)


def test_spectral_norm_lower_bound_is_a_tight_lower_bound() -> None:
    gen = torch.Generator().manual_seed(3)
    for k in (1, 5, 40):
        x = torch.randn(k, 2 * k, generator=gen, dtype=torch.float64)
        s = x @ x.T
        exact = torch.linalg.eigvalsh(s)[-1]
        bound = spectral_norm_lower_bound(s)
        assert bound <= exact * (1 + 1e-12)
        assert bound >= 0.5 * exact  # two power steps from the largest column
    assert spectral_norm_lower_bound(torch.zeros(3, 3)) == 0


def fit_whitening(**options: object) -> tuple[list[float], State]:
    """Fit ``PSGDKronPrecondition(**options)`` (gradient whitening, no momentum) to gradients
    ``G = R_L Z R_R^T`` of covariance ``C = C_L kron C_R`` (4 x 4 and 3 x 3 factors, float64)
    over four phases of decreasing ``precond_lr``: ``max |eig(P C P) - 1|`` after each phase,
    and the final state. ``P C P = I`` is the paper's fixed point, ``P = C^{-1/2}``."""
    gen = torch.Generator().manual_seed(4)
    m, n = 4, 3
    x = torch.randn(m, m, generator=gen, dtype=torch.float64)
    y = torch.randn(n, n, generator=gen, dtype=torch.float64)
    rl = 0.5 * x + 2 * torch.eye(m, dtype=torch.float64)
    rr = 0.5 * y + 2 * torch.eye(n, dtype=torch.float64)
    cov = torch.kron(rl @ rl.T, rr @ rr.T)
    assert (torch.linalg.eigvalsh(cov) - 1).abs().max() > 50  # far from white at Q = I
    p = torch.zeros(m, n, dtype=torch.float64)
    state: State | None = None
    step, errors = 0, []
    for lr, steps in ((0.1, 500), (0.03, 1000), (0.01, 1500), (0.003, 1500)):
        t = PSGDKronPrecondition(
            momentum=0.0,
            whiten="gradient",
            precond_lr=lr,
            balance_prob=0.0,
            prob_flat_start=10**9,
            **options,  # type: ignore[arg-type]
        )
        state = state or t.init(p)
        for _ in range(steps):
            step += 1
            g = rl @ torch.randn(m, n, generator=gen, dtype=torch.float64) @ rr.T
            t.apply(g, state, Ctx(step=step, lr=1.0, weight_decay=0.0, param=p, grad=g))
        q = torch.kron(state["Q_L"], state["Q_R"])
        big_p = q.T @ q
        errors.append((torch.linalg.eigvals(big_p @ cov @ big_p).real - 1).abs().max().item())
    assert state is not None
    return errors, state


def test_fitted_preconditioner_whitens_the_gradients() -> None:
    """The paper's fixed point: gradients with covariance ``C = C_L kron C_R`` give
    ``P -> C^{-1/2}``, i.e. ``P C P = I``. With a decreasing ``precond_lr`` the fit's noise
    shrinks; measured max |eig(P C P) - 1| after each phase: 1.30, 0.48, 0.28, 0.14 (at ``Q = I``
    it is max eig(C) - 1 = 81)."""
    errors, _ = fit_whitening()
    assert errors[-1] < 0.2, errors
    assert errors[0] > errors[-1] * 4, errors


def test_update_order_precondition_first_uses_the_old_factors() -> None:
    """Step 1 with ``precondition_first``: ``P = I``, so the direction is the clipped momentum;
    ``update_first`` has already moved ``Q`` and differs."""
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(6, 4, generator=gen)
    p = torch.zeros(6, 4)
    outs = {}
    for order in ("precondition_first", "update_first"):
        t = PSGDKronPrecondition(update_order=order)
        s = t.init(p)
        outs[order] = t.apply(g.clone(), s, Ctx(step=1, lr=1.0, weight_decay=0.0, param=p, grad=g))
        assert not torch.equal(s["Q_L"], torch.eye(6))  # both update at step 1
    rms = g.square().mean().sqrt()
    torch.testing.assert_close(outs["precondition_first"], g * min(1.0, 1.1 / (rms.item() + 1e-6)))
    assert not torch.allclose(outs["update_first"], outs["precondition_first"])


def test_update_schedules() -> None:
    assert update_probability(1, 1.0, 0.03, 0.001, 500) == 1.0
    assert update_probability(10_000, 1.0, 0.03, 0.001, 500) == 0.03
    counter = [counter_decision(s, 1.0, 0.03, 0.001, 500) for s in range(1, 10_001)]
    assert all(counter[:500]) and sum(counter[-1000:]) in (29, 30, 31)  # every ~33rd step
    t = PSGDKronPrecondition(update_rule="bernoulli")
    bern = [t.updates_at(s) for s in range(1, 10_001)]
    assert bern == [t.updates_at(s) for s in range(1, 10_001)]  # a function of the step
    assert all(bern[:500]) and 10 < sum(bern[-1000:]) < 55
    other = PSGDKronPrecondition(update_rule="bernoulli", seed=1)
    assert bern != [other.updates_at(s) for s in range(1, 10_001)]


def test_diagonal_sides() -> None:
    t = PSGDKronPrecondition(max_size_triangular=8)
    assert t.sides((4, 9)) == (True, False)
    assert PSGDKronPrecondition(memory_save_mode="one_diag").sides((5, 5)) == (True, False)
    assert PSGDKronPrecondition(memory_save_mode="one_diag").sides((7, 5)) == (False, True)
    assert PSGDKronPrecondition(memory_save_mode="smart_one_diag").sides((5, 5)) == (True, True)
    assert PSGDKronPrecondition(memory_save_mode="all_diag").sides((7, 5)) == (False, False)
    s = t.init(torch.zeros(4, 3, 3))  # a conv kernel: its (4, 9) matrix view
    assert s["Q_L"].shape == (4, 4) and s["Q_R"].shape == (9,)


def test_unknown_curvature_source_raises() -> None:
    with pytest.raises(ValueError, match="finite_difference"):
        orthoptim.build("psgd_kron", [torch.zeros(3, 3, requires_grad=True)], curvature="newton")


def test_psgd_kron_trains_teacher_student_at_default_lr() -> None:
    # Measured at lr 1e-3 (default), 300 steps: random teacher 0.219 -> 3.4e-5 (muon 1.0e-4,
    # AdamW 7.1e-3, Shampoo 5.5e-3); ill-conditioned 1.01 -> 0.153 (AdamW 0.178, Shampoo
    # 0.142, muon 0.017).
    losses = train("psgd_kron", 300, problem=random_teacher)
    assert losses[0] > 0.2
    assert losses[-1] < 2e-4
    assert train("psgd_kron", 300, problem=ill_conditioned)[-1] < 0.2


def test_the_fitted_preconditioner_is_what_helps() -> None:
    """The same steps with the preconditioner frozen at ``I`` (a tiny ``precond_lr``): clipped
    momentum SGD, which the fitted preconditioner beats by orders of magnitude (measured: 3.7e-2
    against 3.4e-5)."""
    x, y, model, loss_fn = random_teacher(0)
    opt = orthoptim.build("psgd_kron", model, precond_lr=1e-12)
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
    assert loss.item() > 10 * 2e-4


def test_probes_are_seeded_by_step_and_seed() -> None:
    """The same step and seed: the same probe (whatever the parameter, so a stacked weight
    steps as its separate matrices, tests/routing/test_layouts.py); another step or seed:
    another probe."""
    cpu = torch.device("cpu")
    base = probe((3, 4), 0, 7, torch.float32, cpu)
    assert torch.equal(base, probe((3, 4), 0, 7, torch.float32, cpu))
    for other in ((0, 8), (1, 7)):
        assert not torch.equal(base, probe((3, 4), *other, torch.float32, cpu))


def test_finite_differences_fit_the_inverse_hessian() -> None:
    """The paper's secant pairs ``(d theta, d g)`` on a quadratic with Hessian
    ``H = H_L kron H_R`` (``g = H_L theta H_R``): the fitted ``P`` solves ``P H C H P = C`` for
    the pairs' covariance ``C``, i.e. ``P = H^{-1}``: the eigenvalues of ``P H`` go to 1
    (measured max |eig - 1|: 0.07; at ``Q = I`` they are those of ``H``, up to 14)."""
    gen = torch.Generator().manual_seed(6)
    m, n = 4, 3
    x = torch.randn(m, m, generator=gen, dtype=torch.float64)
    y = torch.randn(n, n, generator=gen, dtype=torch.float64)
    hl = x @ x.T / m + 0.5 * torch.eye(m, dtype=torch.float64)
    hr = y @ y.T / n + 0.5 * torch.eye(n, dtype=torch.float64)
    hess = torch.kron(hl, hr)
    theta = torch.zeros(m, n, dtype=torch.float64)
    state, step, errors = None, 0, []
    for lr, steps in ((0.1, 500), (0.03, 1000), (0.01, 1500)):
        t = PSGDKronPrecondition(
            curvature="finite_difference", precond_lr=lr, balance_prob=0.0, prob_flat_start=10**9
        )
        state = state or t.init(theta)
        for _ in range(steps):
            step += 1
            theta = theta + torch.randn(m, n, generator=gen, dtype=torch.float64)
            g = hl @ theta @ hr
            t.apply(g.clone(), state, Ctx(step=step, lr=1.0, weight_decay=0.0, param=theta, grad=g))
        q = torch.kron(state["Q_L"], state["Q_R"])
        errors.append((torch.linalg.eigvals(q.T @ q @ hess).real - 1).abs().max().item())
    assert errors[-1] < 0.15, errors
    assert (torch.linalg.eigvalsh(hess) - 1).abs().max() > 2


def test_finite_differences_train_teacher_student() -> None:
    """Measured at the default lr 1e-3, 300 steps: 0.219 -> 0.040 (whitening: 3.4e-5; lr 0.1:
    0.011): the secant pairs of a full-batch run are nearly collinear, a poor curvature sample
    on this problem, but the fit must still train."""
    x, y, model, loss_fn = random_teacher(0)
    opt = orthoptim.build("psgd_kron", model, curvature="finite_difference")
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.06


@pytest.mark.parametrize(
    "options",
    [
        {"curvature": "finite_difference"},
        {"update_rule": "bernoulli", "prob_flat_start": 2, "prob_decay": 0.5, "balance_prob": 0.5},
        {"geometry": "Q0.5EQ1.5", "balance_prob": 0.5},
    ],
    ids=["finite_difference", "bernoulli", "procrustes"],
)
def test_resume_is_bit_exact_with_options(options) -> None:
    """The registry's resume test runs the defaults; these options keep their own state (the
    previous parameter and gradient) or draw on the host from the step."""
    x, y, model, loss_fn = random_teacher(0)

    def run(m, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(m, x, y).backward()
            opt.step()

    whole = copy.deepcopy(model)
    opt = orthoptim.build("psgd_kron", whole, **options)
    run(whole, opt, 8)
    first = copy.deepcopy(model)
    opt = orthoptim.build("psgd_kron", first, **options)
    run(first, opt, 4)
    saved = copy.deepcopy(opt.state_dict())
    resumed = copy.deepcopy(first)
    opt = orthoptim.build("psgd_kron", resumed, **options)
    opt.load_state_dict(saved)
    run(resumed, opt, 4)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("m", [7, 512, 513, 1100])
def test_upper_product_is_the_triangular_product(m) -> None:
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, m, generator=gen, dtype=torch.float64)
    q = torch.triu(torch.randn(m, m, generator=gen, dtype=torch.float64))
    torch.testing.assert_close(upper_product(x, q), torch.triu(x) @ q, rtol=1e-12, atol=1e-11)


def test_whitening_momentum_needs_momentum() -> None:
    with pytest.raises(ValueError, match="whiten='momentum' needs momentum > 0"):
        PSGDKronPrecondition(momentum=0.0)
    PSGDKronPrecondition(momentum=0.0, whiten="gradient")
    PSGDKronPrecondition(momentum=0.0, curvature="finite_difference")  # whiten is unused there


def test_procrustes_geometry_whitens_and_keeps_factors_symmetric() -> None:
    """``geometry="Q0.5EQ1.5"`` (psgd_torch's default): the same fixed point ``P C P = I``,
    with factors kept close to symmetric by the Procrustes step (measured: max |eig - 1| 0.13,
    asymmetry ||Q - Q^T|| / ||Q|| 7e-6)."""
    errors, state = fit_whitening(geometry="Q0.5EQ1.5")
    error = errors[-1]
    print(f"\nQ0.5EQ1.5 whitening: max |eig(PCP) - 1| {error:.3f}")
    assert error < 0.2
    for f in (state["Q_L"], state["Q_R"]):
        asym = (torch.linalg.matrix_norm(f - f.T) / torch.linalg.matrix_norm(f)).item()
        print(f"asymmetry {asym:.1e}")
        assert asym < 0.05
    assert (state["lipschitz"] > 0).all()
    with pytest.raises(ValueError, match="curvature='whitening' only"):
        PSGDKronPrecondition(geometry="Q0.5EQ1.5", curvature="finite_difference")


def test_procrustes_geometry_trains_teacher_student() -> None:
    # Measured at lr 1e-3 (default), 300 steps: random teacher 0.219 -> 2.8e-5 (EQ: 3.4e-5);
    # ill-conditioned 1.01 -> 0.129 (EQ: 0.153).
    x, y, model, loss_fn = random_teacher(0)
    opt = orthoptim.build("psgd_kron", model, geometry="Q0.5EQ1.5")
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
    assert loss.item() < 1e-4


@pytest.mark.parametrize(
    "options",
    [
        {"geometry": "Q0.5EQ1.5", "balance_prob": 1.0},
        {"curvature": "finite_difference"},
        {"update_rule": "bernoulli"},
    ],
    ids=["procrustes", "finite_difference", "bernoulli"],
)
def test_options_read_no_device_value(options) -> None:
    """tests/optim/test_host_reads.py runs the defaults; the options' paths read nothing
    either: per step only the shell's non-finite flag."""
    counted = ops.measure(
        "psgd_kron",
        lambda m: [orthoptim.build("psgd_kron", m, **options)],
        depth=2,
        steps=4,
        warmup=0,
    )
    assert counted.host_reads <= 1
