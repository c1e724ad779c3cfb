"""innaprop, optimistic_amsgrad and gravity: oracles written from the papers, the options,
state bytes, and convergence on the teacher-student problems.

Each oracle is a plain float64 loop over one tensor written from the paper's algorithm (not from
our transforms): INNAprop's Algorithm 1 (arXiv 2410.05871), Optimistic AMSGrad's Algorithm 2
with its two sequences ``w_{t+1/2}``, ``w_{t+1}`` and Algorithm 3's extrapolation solved as the
constrained least-squares problem it is (a KKT system, not the paper's normalised ``z``), and
Gravity's Algorithm 1 (arXiv 2101.09192).
"""

from __future__ import annotations

import math

import pytest
import torch

import orthoptim
from orthoptim import ChainOptimizer
from orthoptim.functional.first_order import gravity_initial_velocity, rmpe
from orthoptim.recipes.first_order import gravity, innaprop, optimistic_amsgrad
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.chain import chain
from orthoptim.transforms.inertial import InertialNewton, ScaleByRms
from orthoptim.transforms.optimistic import OptimisticAMSGrad
from tests.helpers import fixed_grads
from tests.recipes.teacher_student import ill_conditioned, random_teacher, train

STEPS = 30
LR = 2.0**-6
SHAPES = [(8, 6), (7,)]


def run_ours(recipe, shape, lr=LR, weight_decay=0.0, seed=1) -> list[torch.Tensor]:
    p = fixed_grads(shape, 1, torch.float64, seed=100)[0].requires_grad_()
    opt = ChainOptimizer([p], recipe, lr=lr, weight_decay=weight_decay)
    out = []
    for g in fixed_grads(shape, STEPS, torch.float64, seed=seed):
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return out


# ------------------------------------------------------------------------------------------
# INNAprop


def innaprop_oracle(shape, alpha, beta, sigma, eps, lr, wd, seed=1) -> list[torch.Tensor]:
    """Algorithm 1 of arXiv 2410.05871 (with the reference's decoupled decay first)."""
    theta = fixed_grads(shape, 1, torch.float64, seed=100)[0].clone()
    psi = (1 - alpha * beta) * theta
    v = torch.zeros_like(theta)
    out = []
    for k, g in enumerate(fixed_grads(shape, STEPS, torch.float64, seed=seed), start=1):
        theta = theta * (1 - lr * wd)
        v = sigma * v + (1 - sigma) * g * g
        v_hat = v / (1 - sigma**k)
        psi = (1 - lr / beta) * psi + lr * (1 / beta - alpha) * theta
        theta = (
            (1 + lr * (1 - alpha * beta) / (beta - lr)) * theta
            - lr / (beta - lr) * psi
            - lr * beta * g / (v_hat.sqrt() + eps)
        )
        out.append(theta.clone())
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("alpha", "beta", "sigma", "wd"), [(0.1, 0.9, 0.999, 0.01), (2.0, 2.0, 0.99, 0.1)]
)
def test_innaprop_matches_the_paper_oracle(shape, alpha, beta, sigma, wd) -> None:
    ours = run_ours(innaprop(alpha=alpha, beta=beta, sigma=sigma), shape, weight_decay=wd)
    want = innaprop_oracle(shape, alpha, beta, sigma, 1e-8, LR, wd)
    worst = max((a - b).abs().max().item() for a, b in zip(ours, want, strict=True))
    print(f"innaprop vs oracle {shape}: {worst:.1e}")
    assert worst < 1e-13


def test_innaprop_with_beta_one_over_alpha_and_no_decay_is_rmsprop_times_beta() -> None:
    """With alpha beta = 1, psi starts at 0 and the step is (1 + 0) theta - lr/(beta-lr) psi
    - lr beta d; psi stays a decaying sum of (1/beta - alpha) theta = 0 terms: plain scaled
    RMSprop. Checks the recipe's wiring of both transforms, not just the oracle's."""
    alpha, beta = 0.5, 2.0
    ours = run_ours(innaprop(alpha=alpha, beta=beta), (8, 6))
    rms = run_ours(chain(ScaleByRms()), (8, 6), lr=LR * beta)
    worst = max((a - b).abs().max().item() for a, b in zip(ours, rms, strict=True))
    assert worst < 1e-14
    default = run_ours(innaprop(), (8, 6))
    assert max((a - b).abs().max().item() for a, b in zip(default, rms, strict=True)) > 1e-3


def test_innaprop_refuses_lr_at_or_above_beta() -> None:
    p = torch.zeros(3, requires_grad=True)
    opt = ChainOptimizer([p], innaprop(beta=0.9), lr=0.9)
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="lr < beta"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"alpha": -1.0}, "alpha"), ({"beta": 0.0}, "beta"), ({"decay_point": "x"}, "decayed")],
)
def test_inertial_newton_validates(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        InertialNewton(**kwargs)


# ------------------------------------------------------------------------------------------
# Optimistic AMSGrad


def extrapolate(points: list[torch.Tensor], reg: float) -> torch.Tensor:
    """Algorithm 3's guess as the problem it solves: min ||U c||^2 + lambda ||c||^2 subject to
    sum c = 1, by its KKT system; lambda as documented (reg max diag(U^T U) + 1e-300)."""
    x = torch.stack([p.flatten() for p in points])
    u = (x[1:] - x[:-1]).T
    r = u.shape[1]
    gram = u.T @ u
    lam = reg * gram.diagonal().max() + 1e-300
    kkt = torch.zeros(r + 1, r + 1, dtype=torch.float64)
    kkt[:r, :r] = 2 * (gram + lam * torch.eye(r, dtype=torch.float64))
    kkt[:r, r] = 1.0
    kkt[r, :r] = 1.0
    rhs = torch.zeros(r + 1, dtype=torch.float64)
    rhs[r] = 1.0
    c = torch.linalg.solve(kkt, rhs)[:r]
    return (c @ x[:-1]).reshape(points[0].shape)


def optimistic_oracle(
    shape, b1, b2, eps, lr, prediction, window, reg, lookahead, second_moment="gradient"
):
    """Algorithm 2 of arXiv 1903.01435: two sequences, no bias correction, v_0 = vhat_0 = eps;
    with ``"prediction_error"`` v averages (g_t - m_t)^2 (the authors' code)."""
    w = fixed_grads(shape, 1, torch.float64, seed=100)[0].clone()
    w_half = w.clone()
    theta = torch.zeros_like(w)
    v = torch.full_like(w, eps)
    vhat = v.clone()
    seen: list[torch.Tensor] = []
    m = torch.zeros_like(w)
    out = []
    for g in fixed_grads(shape, STEPS, torch.float64, seed=1):
        theta_prev = theta
        theta = b1 * theta + (1 - b1) * g
        error = g - m if second_moment == "prediction_error" else g
        v = b2 * v + (1 - b2) * error * error
        vhat = torch.maximum(vhat, v)
        w_half = w_half - lr * theta / vhat.sqrt()
        seen = [*seen, g][-(window + 1) :]
        m = g if prediction == "last_gradient" or len(seen) == 1 else extrapolate(seen, reg)
        h = b1 * (theta_prev if lookahead == "previous" else theta) + (1 - b1) * m
        w = w_half - lr * h / vhat.sqrt()
        out.append(w.clone())
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("prediction", "window"), [("extrapolation", 1), ("extrapolation", 3), ("last_gradient", 1)]
)
@pytest.mark.parametrize("lookahead", ["previous", "current"])
def test_optimistic_amsgrad_matches_the_paper_oracle(shape, prediction, lookahead, window) -> None:
    betas, eps, reg = (0.9, 0.99), 1e-8, 1e-3
    recipe = optimistic_amsgrad(
        betas=betas, eps=eps, prediction=prediction, window=window, extrapolation_reg=reg,
        lookahead_momentum=lookahead,
    )  # fmt: skip
    ours = run_ours(recipe, shape)
    want = optimistic_oracle(shape, *betas, eps, LR, prediction, window, reg, lookahead)
    worst = max((a - b).abs().max().item() for a, b in zip(ours, want, strict=True))
    print(f"optimistic_amsgrad {prediction} {lookahead} r={window} {shape}: {worst:.1e}")
    assert worst < 1e-12


@pytest.mark.parametrize("prediction", ["extrapolation", "last_gradient"])
def test_optimistic_amsgrad_prediction_error_moment_matches_the_oracle(prediction) -> None:
    betas, eps, reg, shape = (0.9, 0.99), 1e-8, 1e-3, (8, 6)
    recipe = optimistic_amsgrad(
        betas=betas, eps=eps, prediction=prediction, window=3, second_moment="prediction_error"
    )
    ours = run_ours(recipe, shape)
    want = optimistic_oracle(
        shape, *betas, eps, LR, prediction, 3, reg, "previous", "prediction_error"
    )
    worst = max((a - b).abs().max().item() for a, b in zip(ours, want, strict=True))
    plain = run_ours(optimistic_amsgrad(betas=betas, prediction=prediction, window=3), shape)
    assert worst < 1e-12
    assert max((a - b).abs().max().item() for a, b in zip(plain, want, strict=True)) > 1e-4


def test_rmpe_recovers_the_limit_of_a_linear_sequence() -> None:
    """x_k = x* + A^k (x_0 - x*) with A of rank 2: the extrapolation of 3 differences is exact
    (the minimal polynomial has degree 2), up to the ridge."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(10, 2, generator=gen, dtype=torch.float64)).Q
    a = basis @ torch.diag(torch.tensor([0.5, -0.3], dtype=torch.float64)) @ basis.T
    limit = torch.randn(10, generator=gen, dtype=torch.float64)
    x = [limit + basis @ torch.tensor([1.0, 2.0], dtype=torch.float64)]
    for _ in range(3):
        x.append(limit + a @ (x[-1] - limit))
    guess = rmpe(torch.stack(x), 1e-12)
    assert (guess - limit).abs().max() < 1e-9
    assert (x[-1] - limit).abs().max() > 1e-2


def test_rmpe_of_equal_points_is_that_point() -> None:
    x = torch.arange(6.0).repeat(4, 1)
    assert torch.equal(rmpe(x, 1e-3), x[0])


def test_optimistic_state_and_options() -> None:
    p = torch.zeros(4, 3)
    assert set(OptimisticAMSGrad(prediction="none").init(p)) == {
        "exp_avg", "exp_avg_sq", "max_exp_avg_sq",
    }  # fmt: skip
    assert OptimisticAMSGrad(window=4).init(p)["history"].shape == (5, 4, 3)
    assert "history" not in OptimisticAMSGrad(prediction="last_gradient").init(p)
    assert "guess" in OptimisticAMSGrad(second_moment="prediction_error").init(p)
    for kwargs, match in [
        ({"prediction": "x"}, "extrapolation"),
        ({"window": 0}, "window"),
        ({"convention": "x"}, "paper"),
        ({"lookahead_momentum": "x"}, "previous"),
        ({"extrapolation_reg": 0.0}, "extrapolation_reg"),
        ({"second_moment": "x"}, "prediction_error"),
        ({"second_moment": "prediction_error", "prediction": "none"}, "needs prediction"),
    ]:
        with pytest.raises(ValueError, match=match):
            OptimisticAMSGrad(**kwargs)


def test_the_extrapolation_ring_resumes_in_order() -> None:
    """Past the window the ring wraps; the guess must use the gradients in time order, which a
    run that stops and resumes from a state dict reproduces bit for bit."""
    shape, steps = (5, 4), 9
    grads = fixed_grads(shape, steps, torch.float64, seed=3)

    def run(split: int | None) -> torch.Tensor:
        p = torch.ones(shape, dtype=torch.float64, requires_grad=True)
        opt = ChainOptimizer([p], optimistic_amsgrad(window=3), lr=LR)
        for t, g in enumerate(grads):
            if t == split:
                saved = opt.state_dict()
                q = p.detach().clone().requires_grad_()
                opt = ChainOptimizer([q], optimistic_amsgrad(window=3), lr=LR)
                opt.load_state_dict(saved)
                p = q
            p.grad = g.clone()
            opt.step()
        return p.detach()

    assert torch.equal(run(None), run(6))


# ------------------------------------------------------------------------------------------
# Gravity


def gravity_oracle(shape, alpha, beta, lr, first_t=1) -> list[torch.Tensor]:
    """Algorithm 1 of arXiv 2101.09192, v_0 from our seeded draw (position 0, seed 0); the
    first step's ``t`` is 1 (the authors' PyTorch port) or 0 (their Keras optimizer)."""
    theta = fixed_grads(shape, 1, torch.float64, seed=100)[0].clone()
    v = gravity_initial_velocity(shape, alpha / lr, 0, 0, torch.float64)
    out = []
    for t, g in enumerate(fixed_grads(shape, STEPS, torch.float64, seed=1), start=first_t):
        m = 1.0 / g.abs().max()
        zeta = g / (1 + (g / m) ** 2)
        b = (beta * t + 1) / (t + 2)
        v = b * v + (1 - b) * zeta
        theta = theta - lr * v
        out.append(theta.clone())
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("origin", "first_t"), [("one", 1), ("zero", 0)])
def test_gravity_matches_the_paper_oracle(shape, origin, first_t) -> None:
    ours = run_ours(gravity(alpha=0.05, beta=0.8, schedule_origin=origin), shape, lr=0.1)
    want = gravity_oracle(shape, 0.05, 0.8, 0.1, first_t)
    worst = max((a - b).abs().max().item() for a, b in zip(ours, want, strict=True))
    print(f"gravity ({origin}) vs oracle {shape}: {worst:.1e}")
    assert worst < 1e-13
    other = run_ours(
        gravity(alpha=0.05, beta=0.8, schedule_origin="zero" if first_t else "one"), shape, lr=0.1
    )
    assert max((a - b).abs().max().item() for a, b in zip(other, want, strict=True)) > 1e-6


def test_gravity_draws_differ_per_tensor_and_seed_but_not_per_run() -> None:
    def first_v(seed: int) -> list[torch.Tensor]:
        ps = [torch.zeros(6, 5, requires_grad=True), torch.zeros(6, 5, requires_grad=True)]
        opt = ChainOptimizer(ps, gravity(seed=seed), lr=0.1)
        for p in ps:
            p.grad = torch.zeros_like(p)
        opt.step()
        return [opt.state[p]["gravity.v"].clone() for p in ps]

    a, b = first_v(0), first_v(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], first_v(1)[0])


def test_gravity_force_is_bounded_and_zero_safe() -> None:
    from orthoptim.functional.first_order import gravity_force

    g = torch.tensor([0.0, 1e-3, -2.0, 5.0], dtype=torch.float64)
    zeta = gravity_force(g)
    assert (zeta.abs() <= 1 / (2 * 5.0) + 1e-15).all()
    assert torch.equal(gravity_force(torch.zeros(3)), torch.zeros(3))


def test_gravity_starts_at_rest_with_zero_initial_velocity_or_a_first_lr_of_zero() -> None:
    for recipe, lr in [(gravity(initial_velocity="zero"), 0.1), (gravity(), 0.0)]:
        p = torch.zeros(3, requires_grad=True)
        opt = ChainOptimizer([p], recipe, lr=lr)
        p.grad = torch.zeros(3)
        opt.step()
        assert torch.equal(opt.state[p]["gravity.v"], torch.zeros(3))
    p = torch.zeros(3, requires_grad=True)
    opt = ChainOptimizer([p], gravity(), lr=0.1)
    p.grad = torch.zeros(3)
    opt.step()
    assert opt.state[p]["gravity.v"].abs().min() > 0


# ------------------------------------------------------------------------------------------
# registry: state bytes, convergence


def test_state_bytes_per_parameter() -> None:
    """float32: innaprop 8 B (v, psi), gravity 4 B (v), optimistic_amsgrad 16 B + 4 (r+1) B
    (m, v, vhat, the optimistic step, the window of gradients), 12 B without a prediction."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    n = sum(p.numel() for p in model.parameters())
    steps = 4 * len(list(model.parameters()))

    def state_bytes(name: str, **options) -> int:
        opt = orthoptim.build(name, model, **options)
        model(torch.randn(3, 6)).square().sum().backward()
        opt.step()
        opt.zero_grad()
        return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values())

    assert state_bytes("innaprop") == 8 * n + steps
    assert state_bytes("gravity") == 4 * n + steps
    assert state_bytes("optimistic_amsgrad") == (16 + 4 * 6) * n + steps
    assert state_bytes("optimistic_amsgrad", prediction="last_gradient") == 16 * n + steps
    assert state_bytes("optimistic_amsgrad", prediction="none") == 12 * n + steps


CONVERGENCE = [
    # name, options, problem, threshold on the final loss (150 steps, registry lr), measured
    ("innaprop", {}, random_teacher, 0.02),  # 1.39e-2 (adamw 1.48e-2, sgd 2.25e-2)
    ("innaprop", {}, ill_conditioned, 0.25),  # 0.211 (adamw 0.213, sgd 0.357)
    ("optimistic_amsgrad", {}, random_teacher, 0.02),  # 1.28e-2 (none: 1.38e-2)
    ("optimistic_amsgrad", {}, ill_conditioned, 0.25),  # 0.203 (none: 0.205)
    ("optimistic_amsgrad", {"prediction": "last_gradient"}, ill_conditioned, 0.25),  # 0.203
    ("optimistic_amsgrad", {"second_moment": "prediction_error"}, ill_conditioned, 0.25),  # 0.182
    ("gravity", {}, random_teacher, 0.03),  # 2.23e-2
    ("gravity", {}, ill_conditioned, 0.4),  # 0.337
]


@pytest.mark.parametrize(("name", "options", "problem", "threshold"), CONVERGENCE)
def test_converges_on_the_teacher_student_problems(name, options, problem, threshold) -> None:
    losses = train(name, 150, problem=problem, options=options)
    print(f"{name} {options} {problem.__name__}: {losses[0]:.3e} -> {losses[-1]:.3e}")
    assert math.isfinite(losses[-1])
    assert losses[-1] < threshold < losses[0]


def test_rms_scaling_is_adam_with_b1_zero() -> None:
    """ScaleByRms computes Adam's numbers with b1 = 0, one buffer fewer."""
    from orthoptim.transforms.adaptive import ScaleByAdam

    rms, adam = ScaleByRms(beta=0.99), ScaleByAdam(betas=(0.0, 0.99))
    p = torch.zeros(4, 3, dtype=torch.float64)
    s_rms, s_adam = rms.init(p), adam.init(p)
    for t, g in enumerate(fixed_grads((4, 3), 5, torch.float64), start=1):
        c = Ctx(t, 0.1, 0.0, p, g)
        torch.testing.assert_close(
            rms.apply(g.clone(), s_rms, c), adam.apply(g.clone(), s_adam, c), rtol=0, atol=0
        )
