"""Grams, AdamP, SGDP: naive oracles from the papers, reductions, projection, convergence.

Oracles (plain formulas and per-row loops, nothing imported from orthoptim):
  * Grams, Cao et al. arXiv 2412.17107 Algorithm 1, with the conventions of
    Gunale0926/Grams@f91a375 ``grams/src/grams.py``: ``eps`` added to ``sqrt(v)`` before bias
    correction, decoupled decay ``p (1 - lr wd)`` first.
  * AdamP / SGDP, Heo et al. arXiv 2006.08217 Algorithms 1-2, with the conventions of
    clovaai/AdamP@146287b ``adamp/adamp.py`` and ``adamp/sgdp.py``: channel view then layer view,
    ``|cos| < delta / sqrt(row length)``, ``p_n = p / (||p|| + eps)``, decay ratio ``wd_ratio``
    (and ``/(1 - momentum)`` for SGDP), ``eps`` added to ``sqrt(v_hat)``.

Measured max abs parameter difference over 25 steps (torch 2.13 CPU, |p| <= ~4, lr 2**-6, wd 2**-7),
printed by ``pytest -s``: float64 <= 3.4e-15 for all three, with and without scale-invariant
gradients (round-off of differently ordered products: the oracle divides by the bias correction
separately and decays first); float32 <= 1.7e-6 (the same at float32 round-off, a few ulp of
|p| ~ 4 over 25 steps). Tolerances 1e-13 (float64) and 1e-5 (float32) leave 6-30x headroom and
sit far below one step (lr = 1.6e-2).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim import ChainOptimizer
from orthoptim.recipes import adamw
from orthoptim.recipes.gradient_sign import cautious, grams
from orthoptim.recipes.radial import adamp, sgdp
from orthoptim.transforms import AddWeightDecay, Momentum, chain
from tests.helpers import fixed_grads

STEPS = 25
LR, WD = 2.0**-6, 2.0**-7
SHAPES = [(8, 6), (4, 3, 3, 3), (7,)]
TOL = {torch.float64: 1e-13, torch.float32: 1e-5}


def radial_free(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``g`` without its per-channel component along ``p``: the gradient of a loss that is
    invariant to each output channel's scale (a weight followed by a normalisation)."""
    if p.ndim < 2:
        return g
    rows, pr = g.reshape(g.shape[0], -1), p.reshape(p.shape[0], -1)
    along = (rows * pr).sum(1, keepdim=True) / (pr * pr).sum(1, keepdim=True)
    return (rows - pr * along).view_as(g)


# ------------------------------------------------------------------------------------------
# Oracles


class GramsOracle:
    def __init__(self, p, b1=0.9, b2=0.999, eps=1e-6):
        self.p, self.b1, self.b2, self.eps, self.t = p.clone(), b1, b2, eps, 0
        self.m, self.v = torch.zeros_like(p), torch.zeros_like(p)

    def step(self, g):
        self.t += 1
        self.p = self.p * (1 - LR * WD)
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        step_size = LR * math.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        self.p = self.p - step_size * torch.sign(g) * self.m.abs() / (self.v.sqrt() + self.eps)


def project(p, g, u, delta=0.1, wd_ratio=0.1, eps=1e-8):
    """AdamP's projection, one view and one row at a time; returns (u, decay ratio)."""
    if p.ndim < 2:
        return u, 1.0
    for rows in (p.shape[0], 1):
        pv, gv, uv = p.reshape(rows, -1), g.reshape(rows, -1), u.reshape(rows, -1).clone()
        n = pv.shape[1]
        cos = [
            abs(float(gv[i] @ pv[i]) / (max(gv[i].norm(), eps) * max(pv[i].norm(), eps)))
            for i in range(rows)
        ]
        if max(cos) < delta / math.sqrt(n):
            for i in range(rows):
                unit = pv[i] / (pv[i].norm() + eps)
                uv[i] = uv[i] - unit * float(unit @ uv[i])
            return uv.view_as(u), wd_ratio
    return u, 1.0


class AdamPOracle:
    def __init__(self, p, b1=0.9, b2=0.999, eps=1e-8, nesterov=False):
        self.p, self.b1, self.b2, self.eps, self.nesterov, self.t = (
            p.clone(),
            b1,
            b2,
            eps,
            nesterov,
            0,
        )
        self.m, self.v = torch.zeros_like(p), torch.zeros_like(p)

    def step(self, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        denom = self.v.sqrt() / math.sqrt(1 - self.b2**self.t) + self.eps
        num = self.b1 * self.m + (1 - self.b1) * g if self.nesterov else self.m
        u, ratio = project(self.p, g, num / denom)
        self.p = self.p * (1 - LR * WD * ratio) - LR / (1 - self.b1**self.t) * u


class SGDPOracle:
    def __init__(self, p, momentum=0.9, dampening=0.0, nesterov=True, project_buffer=False):
        self.p, self.mu, self.d, self.nesterov = p.clone(), momentum, dampening, nesterov
        self.project_buffer = project_buffer
        self.buf = torch.zeros_like(p)

    def step(self, g):
        self.buf = self.mu * self.buf + (1 - self.d) * g
        d_p = g + self.mu * self.buf if self.nesterov else self.buf.clone()
        u, ratio = project(self.p, g, d_p)
        if self.project_buffer:  # clovaai: d_p is the buffer itself, projected in place
            self.buf = u
        self.p = self.p * (1 - LR * WD * ratio / (1 - self.mu)) - LR * u


CASES = {
    "grams": (grams(), GramsOracle),
    "adamp": (adamp(), AdamPOracle),
    "adamp_nesterov": (adamp(nesterov=True), lambda p: AdamPOracle(p, nesterov=True)),
    "sgdp": (sgdp(), SGDPOracle),
    "sgdp_heavy_ball_damped": (
        sgdp(nesterov=False, dampening=0.25),
        lambda p: SGDPOracle(p, nesterov=False, dampening=0.25),
    ),
    "sgdp_clovaai_buffer": (
        sgdp(nesterov=False, project_buffer=True),
        lambda p: SGDPOracle(p, nesterov=False, project_buffer=True),
    ),
}


def run_vs_oracle(recipe, oracle_cls, dtype, scale_invariant):
    inits = [fixed_grads(s, 1, dtype, seed=100 + i)[0] for i, s in enumerate(SHAPES)]
    raw = [fixed_grads(s, STEPS, dtype, seed=1 + i) for i, s in enumerate(SHAPES)]
    ours = [p.clone().requires_grad_() for p in inits]
    oracles = [oracle_cls(p) for p in inits]
    opt = ChainOptimizer(ours, recipe, lr=LR, weight_decay=WD, fast_paths=False)
    worst = 0.0
    for t in range(STEPS):
        for p, o, gs in zip(ours, oracles, raw, strict=True):
            g = radial_free(gs[t], p.detach()) if scale_invariant else gs[t]
            p.grad = g.clone()
            o.step(g.clone())
        opt.step()
        for p, o in zip(ours, oracles, strict=True):
            worst = max(worst, (p.detach() - o.p).abs().max().item())
    return worst


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("scale_invariant", [False, True], ids=["plain", "scale_invariant"])
def test_matches_the_paper_oracle(case, dtype, scale_invariant) -> None:
    recipe, oracle_cls = CASES[case]
    worst = run_vs_oracle(recipe, oracle_cls, dtype, scale_invariant)
    print(
        f"{case} {dtype} {'scale-invariant' if scale_invariant else 'plain'}: max |dp| {worst:.2e}"
    )
    assert worst <= TOL[dtype]


# ------------------------------------------------------------------------------------------
# Reductions


def trajectory(recipe, grads, init, wd=WD):
    p = init.clone().requires_grad_()
    opt = ChainOptimizer([p], recipe, lr=LR, weight_decay=wd, fast_paths=False)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_adamp_on_a_scale_variant_weight_is_adamw() -> None:
    init = fixed_grads((8, 6), 1, torch.float64, seed=5)[0]
    # A strong radial part makes |cos(g, p)| far above delta / sqrt(n) in both views.
    grads = [g + 2 * init for g in fixed_grads((8, 6), STEPS, torch.float64)]
    ours = trajectory(adamp(), grads, init)
    # to round-off: adamw's decay is folded into its final update, theta (1 - lr wd) - lr u
    # (Chain.fold_from), adamp's projection ends its chain and keeps theta - lr (u + wd theta)
    torch.testing.assert_close(ours, trajectory(adamw(), grads, init), rtol=0, atol=1e-14)
    assert not torch.equal(ours, trajectory(adamp(), [radial_free(g, init) for g in grads], init))


def test_sgdp_buffer_conventions_differ_only_on_scale_invariant_weights() -> None:
    init = fixed_grads((8, 6), 1, torch.float64, seed=5)[0]
    grads = fixed_grads((8, 6), STEPS, torch.float64)
    variant = [g + 2 * init for g in grads]
    runs = [
        trajectory(sgdp(nesterov=False, project_buffer=b), variant, init) for b in (False, True)
    ]
    assert torch.equal(runs[0], runs[1])
    p_kept = trajectory(sgdp(nesterov=False), [radial_free(g, init) for g in grads], init)
    p_proj = trajectory(
        sgdp(nesterov=False, project_buffer=True), [radial_free(g, init) for g in grads], init
    )
    assert (p_kept - p_proj).abs().max() > 1e-6
    with pytest.raises(ValueError, match="project_buffer=False"):
        sgdp(project_buffer=True)


def test_sgdp_on_a_scale_variant_weight_is_momentum_sgd_with_its_decay() -> None:
    init = fixed_grads((8, 6), 1, torch.float64, seed=5)[0]
    grads = [g + 2 * init for g in fixed_grads((8, 6), STEPS, torch.float64)]
    plain = chain(Momentum(beta=0.9, kind="sum", nesterov=True), AddWeightDecay())
    torch.testing.assert_close(
        trajectory(sgdp(), grads, init),
        trajectory(plain, grads, init, wd=WD / (1 - 0.9)),
        rtol=0,
        # the decay factor rounds as wd * (1/(1-mu)) vs wd / (1-mu), and the plain chain's
        # decay is folded into its final update (Chain.fold_from): a few float64 ulps
        atol=1e-14,
    )


@pytest.mark.parametrize("eps_placement", ["debiased", "raw"])
def test_grams_with_gradient_signs_that_agree_with_adam_is_adam(eps_placement) -> None:
    # Fixed signs per entry: the EMA m keeps the gradient's sign, so Adam's update has it too.
    signs = torch.sign(fixed_grads((8, 6), 1, torch.float64, seed=7)[0])
    grads = [g.abs() * signs for g in fixed_grads((8, 6), STEPS, torch.float64)]
    init = fixed_grads((8, 6), 1, torch.float64, seed=5)[0]
    adam = chain(*grams(eps_placement=eps_placement).transforms[:1], AddWeightDecay())
    ours = trajectory(grams(eps_placement=eps_placement), grads, init)
    assert torch.equal(ours, trajectory(adam, grads, init))
    if eps_placement == "debiased":
        assert torch.equal(ours, trajectory(adamw(eps=1e-6), grads, init))
    # With signs that do flip, Grams and Adam part ways.
    flipping = fixed_grads((8, 6), STEPS, torch.float64)
    assert not torch.equal(trajectory(grams(), flipping, init), trajectory(adam, flipping, init))


def test_eps_placements_differ_only_through_eps() -> None:
    grads, init = fixed_grads((8, 6), STEPS, torch.float64), torch.zeros(8, 6, dtype=torch.float64)
    raw = trajectory(grams(eps_placement="raw", eps=1e-6), grads, init)
    assert not torch.equal(raw, trajectory(grams(eps_placement="debiased", eps=1e-6), grads, init))
    tiny = [
        trajectory(grams(eps_placement=e, eps=1e-300), grads, init) for e in ("raw", "debiased")
    ]
    torch.testing.assert_close(tiny[0], tiny[1], rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------
# Projection properties


@pytest.mark.parametrize("recipe", [adamp(), sgdp(), adamp(nesterov=True)], ids=repr)
def test_projected_update_has_no_radial_component_per_channel(recipe) -> None:
    init = fixed_grads((6, 10), 1, torch.float64, seed=3)[0]
    p = init.clone().requires_grad_()
    opt = ChainOptimizer([p], recipe, lr=LR, weight_decay=0.0, fast_paths=False)
    for g in fixed_grads((6, 10), 5, torch.float64):
        before = p.detach().clone()
        p.grad = radial_free(g, before)
        opt.step()
        step = before - p.detach()
        radial = (step * before).sum(1) / before.norm(dim=1)
        # Not 0: the unit vector is p / (||p|| + eps), so ~2 eps / ||p|| of the radial part stays.
        assert radial.abs().max() < 1e-7 * step.norm()
        # Hence the norm only grows at second order: ||p'||^2 = ||p||^2 + ||step||^2.
        torch.testing.assert_close(
            p.detach().norm(dim=1) ** 2, before.norm(dim=1) ** 2 + step.norm(dim=1) ** 2
        )


def test_projection_falls_back_to_the_layer_view_and_decays_with_wd_ratio() -> None:
    # Channel 0 is aligned with its gradient (so the channel view fails) but the layer-wise
    # cosine stays under delta / sqrt(numel): the layer view projects.
    p = torch.zeros(50, 4, dtype=torch.float64)
    p[:, 0] = 1.0
    g = torch.zeros_like(p)
    g[0, 0], g[1:, 1] = 1e-3, 1.0
    q = p.clone().requires_grad_()
    opt = ChainOptimizer([q], sgdp(momentum=0.0, nesterov=False), lr=1.0, weight_decay=0.5)
    q.grad = g
    opt.step()
    unit = p / (p.norm() + 1e-8)  # the reference's eps
    expected = p * (1 - 0.5 * 0.1) - (g - unit * (unit * g).sum())
    torch.testing.assert_close(q.detach(), expected, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------
# Cautious variants of these recipes


def test_cautious_adamp_masks_before_projecting() -> None:
    names = [type(t).__name__ for t in cautious(adamp()).transforms]
    assert names == ["ScaleByAdam", "CautiousMask", "ProjectRadial"]


# ------------------------------------------------------------------------------------------
# Convergence at the default lr


class NormedTwoLayer(nn.Module):
    """``tanh(3 x W1_n^T) (3 W2_n)^T`` with ``W_n`` the row-normalised weights: the loss is
    invariant to each row's scale, as for a weight followed by a normalisation layer."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(32, 32, generator=generator) / 32**0.5)
        self.w2 = nn.Parameter(torch.randn(8, 32, generator=generator) / 32**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1 = self.w1 / self.w1.norm(dim=1, keepdim=True)
        w2 = self.w2 / self.w2.norm(dim=1, keepdim=True)
        return torch.tanh(3 * x @ w1.T) @ (3 * w2).T


def scale_invariant_run(name: str, steps: int, lr: float | None = None) -> tuple[float, float]:
    """(relative loss, ||W1||) after full-batch steps at the spec's default (or given) lr, on
    inputs with feature scales log-spaced over two decades (condition number 1e4)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=g) * torch.logspace(0, -2, 32) * 3
    with torch.no_grad():
        teacher = NormedTwoLayer(g)
        teacher.w1.mul_(1 / torch.logspace(0, -2, 32))
        y = teacher(x)
    model = NormedTwoLayer(torch.Generator().manual_seed(1))
    opt = orthoptim.build(name, list(model.parameters()), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y) / y.var()
        loss.backward()
        opt.step()
    return loss.item(), model.w1.norm().item()


def test_adamp_beats_adam_on_a_scale_invariant_problem_at_the_default_lr() -> None:
    # Measured (torch 2.13 CPU): AdamP 0.34 with ||W1|| 5.9 (from 5.9), AdamW 0.53 with
    # ||W1|| 8.1: Adam's radial steps grow the norm and shrink its effective step size.
    adamp_loss, adamp_norm = scale_invariant_run("adamp", 300)
    adam_loss, adam_norm = scale_invariant_run("adamw", 300)
    print(
        f"adamp {adamp_loss:.3f} |W1| {adamp_norm:.2f}; adamw {adam_loss:.3f} |W1| {adam_norm:.2f}"
    )
    assert adamp_loss < 0.8 * adam_loss and adamp_loss < 0.45
    assert adamp_norm < 6.0 < 7.5 < adam_norm


def test_sgdp_beats_sgd_on_a_scale_invariant_problem_at_its_default_lr() -> None:
    # Measured (torch 2.13 CPU, lr 0.1 for both): SGDP 0.24 with ||W1|| 7.9, SGD 0.47 with
    # ||W1|| 21.2. (At SGD's own default lr 0.01, SGD reaches 0.20 and SGDP 0.17.)
    sgdp_loss, sgdp_norm = scale_invariant_run("sgdp", 300)
    sgd_loss, sgd_norm = scale_invariant_run("sgd", 300, lr=orthoptim.registry.get("sgdp").lr)
    print(f"sgdp {sgdp_loss:.3f} |W1| {sgdp_norm:.2f}; sgd {sgd_loss:.3f} |W1| {sgd_norm:.2f}")
    assert sgdp_loss < 0.7 * sgd_loss and sgdp_loss < 0.35
    assert sgdp_norm < 0.5 * sgd_norm


def diagonal_quadratic(name: str, steps: int) -> float:
    """f(x) / f(x0) for f = sum(lambda_i x_i^2) / 2, lambda log-spaced over 1..1e-3."""
    lam = torch.logspace(0, -3, 32, dtype=torch.float64)
    x = torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.03
    f0 = (lam * x * x).sum() / 2
    x.requires_grad_()
    opt = orthoptim.build(name, [x], weight_decay=0.0)
    for _ in range(steps):
        x.grad = lam * x.detach()
        opt.step()
    return ((lam * x.detach() ** 2).sum() / 2 / f0).item()


def test_grams_converges_faster_than_adam_on_an_ill_conditioned_quadratic() -> None:
    # Measured at step 200: Grams 1.1e-14, AdamW 5.6e-8. Once Adam's momentum overshoots the
    # minimum along a coordinate, Grams follows the gradient's sign back instead.
    grams_loss, adam_loss = diagonal_quadratic("grams", 200), diagonal_quadratic("adamw", 200)
    print(f"grams {grams_loss:.1e}, adamw {adam_loss:.1e}")
    assert grams_loss < 1e-12 < 1e-9 < adam_loss
