"""MARS (``mars_adamw``, ``mars_lion``) against heavyball, pytorch-optimizer and a naive oracle.

Fixed gradient sequences (no backprop) go to orthoptim and to the package, configured to shared
conventions, and the parameters are compared after every step. Measured max abs differences
(torch 2.13.0 CPU, heavyball 3.2.1, pytorch-optimizer 4.1.0; 20 steps, initial p ~ N(0, 1),
gradients ~ N(0, 1) so the clip is active every step; lr = 2**-6, wd = 2**-7 where "wd"; print
them with ``python -m pytest tests/reference/test_mars_vs_packages.py -q -s``):

| reference                            | dtype   | wd     | max abs diff      | why not zero       |
|--------------------------------------|---------|--------|-------------------|--------------------|
| heavyball AdamW(mars=True)           | float64 | 0 / wd | 8.9e-16 / 1.3e-15 | debias, decay      |
| heavyball AdamW(mars=True)           | float32 | 0 / wd | 2.4e-7 / 1.2e-6   | same, in float32   |
| pytorch-optimizer MARS adamw         | float64 | wd     | 1.8e-15           | op order, decay    |
| pytorch-optimizer MARS adamw         | float32 | wd     | 9.5e-7            | same, in float32   |
| ... with 1-D params (AdamW route)    | f64/f32 | wd     | 2.7e-15 / 1.8e-6  | same               |
| pytorch-optimizer MARS lion          | f64/f32 | 0      | 0 (bitwise)       | -                  |
| pytorch-optimizer MARS lion          | f64/f32 | wd     | 4.4e-16 / 2.4e-7  | decay rounding     |
| p-o Lion vs mars_lion(gamma=0)       | f64/f32 | 0      | 0 (bitwise)       | -                  |
| oracle, both variants, clip on / off | float64 | wd     | <= 4.4e-16        | op order           |
| oracle, approximate                  | float32 | wd     | 2.6e-7 / 1.3e-7   | float32 vs float64 |

Conventions matched:

* heavyball 3.2.1 ``AdamW(mars=True, mars_gamma=h)`` calls ``utils.mars_correction(g, old_g,
  beta1=mars_gamma, gamma=beta1)`` with the two scalars swapped, so its correction coefficient is
  ``b1 h / (1 - h)`` instead of ``h b1 / (1 - b1)``: ``h = k / (b1 + k)`` with ``k = gamma b1 /
  (1 - b1)`` gives our ``gamma`` (the same correction strength). It does not clip
  (``clip=None`` on our side) and takes ``max(sqrt(v_hat), eps)`` instead of
  ``sqrt(v_hat) + eps``: both sides use ``eps = 1e-30``, below an ulp of ``sqrt(v_hat)``, where
  the two are the same. Its debiasing rescales the EMA coefficient (``beta_debias``) instead of
  dividing by ``1 - beta^t``: equal to round-off. Its state is kept in ``storage_dtype``
  (float64 for float64 parameters here).
* pytorch-optimizer 4.1.0 ``MARS(mars_type=...)`` is AGI-Arena/MARS@4831e28 with a copied
  ``last_grad`` (zeros before the first step, the clip ``c / max(1, ||c||)``); its Adam
  denominator is ``(sqrt(v + 1e-15) + eps) / sqrt(1 - b2^t)`` (eps before debiasing) where ours
  is ``sqrt(v / (1 - b2^t)) + eps``. The tests use ``eps = 1e-30`` (below an ulp of
  ``sqrt(v_hat)``, so its placement cannot show) and patch the ``1e-15`` to 0: left in, it
  moves the elements whose ``v`` is near 1e-15 (measured 4.5e-7 in float64). What remains is
  operation order and its two roundings of ``p`` for the decay (``p *= 1 - lr wd``, then step).
* The oracle below is the algorithm box of arXiv 2411.10438 (``m_0 = 0, x_1 = x_0``; ``c_t``,
  its clip at norm 1, ``m_t``, then the preconditioned step with the MARS-AdamW or MARS-Lion
  ``H_t``) as naive loops over Python floats, pinned to the reference code where the two
  differ: the previous gradient is 0 before the first step (not ``x_0 = x_1``), ``v`` is the
  EMA of ``c~_t^2`` (the paper writes the raw gradient's square), eps is added after debiasing,
  and the decay is ``-lr (lambda p + u)``. The exact variant runs on a toy loss whose
  gradient at any point and batch is written out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim.optim import ChainOptimizer
from orthoptim.recipes.mars import MARS_ADAMW, mars_adamw
from orthoptim.recipes.plan import with_adamw
from tests.helpers import fixed_grads

pytestmark = pytest.mark.reference

STEPS = 20
LR = 2.0**-6  # powers of two: exact in float32 (heavyball passes lr through a float32 tensor)
WD = 2.0**-7
GAMMA = 0.025


@pytest.fixture
def pytorch_optimizer_plain_sqrt(pytorch_optimizer, monkeypatch):
    """pytorch-optimizer with ``sqrt(v)`` instead of ``sqrt(v + 1e-15)`` in Adam's denominator
    (its ``exp_avg_sq_eps``, not an option of ``MARS``); everything else is its own code."""
    base = pytorch_optimizer.base.optimizer.BaseOptimizer
    one, many = base.apply_ams_bound, base.apply_ams_bound_foreach

    def apply_ams_bound(ams_bound, exp_avg_sq, max_exp_avg_sq, eps, exp_avg_sq_eps=1e-15):
        return one(ams_bound, exp_avg_sq, max_exp_avg_sq, eps, 0.0)

    def apply_ams_bound_foreach(ams_bound, exp_avg_sqs, max_exp_avg_sqs, eps, exp_avg_sq_eps=1e-15):
        return many(ams_bound, exp_avg_sqs, max_exp_avg_sqs, eps, 0.0)

    monkeypatch.setattr(base, "apply_ams_bound", staticmethod(apply_ams_bound))
    monkeypatch.setattr(base, "apply_ams_bound_foreach", staticmethod(apply_ams_bound_foreach))
    return pytorch_optimizer


def run_pair(
    shapes: list[tuple[int, ...]],
    dtype: torch.dtype,
    ours: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    theirs: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    label: str,
    scale: float = 1.0,
) -> tuple[float, float]:
    """Max |p_ours - p_theirs| over all steps and max |p|, on the same gradients (clones each)."""
    inits = [fixed_grads(s, 1, dtype, seed=100 + i)[0] for i, s in enumerate(shapes)]
    grads = [fixed_grads(s, STEPS, dtype, seed=1 + i) for i, s in enumerate(shapes)]
    a_ps = [p.clone().requires_grad_() for p in inits]
    b_ps = [p.clone().requires_grad_() for p in inits]
    a, b = ours(a_ps), theirs(b_ps)
    diff = top = 0.0
    for t in range(STEPS):
        for pa, pb, g in zip(a_ps, b_ps, grads, strict=True):
            pa.grad, pb.grad = g[t].clone() * scale, g[t].clone() * scale
        a.step()
        b.step()
        for pa, pb in zip(a_ps, b_ps, strict=True):
            diff = max(diff, (pa.detach() - pb.detach()).abs().max().item())
            top = max(top, pa.detach().abs().max().item())
    print(f"{label} {shapes} {dtype}: max |dp| {diff:.3g} (|p| <= {top:.3g})")
    return diff, top


def roundoff(dtype: torch.dtype, magnitude: float, ulps: float = 1.0) -> float:
    """Trajectories with equal updates drift apart by at most ~``ulps`` ulp of |p| per step."""
    return STEPS * ulps * torch.finfo(dtype).eps * magnitude


# --------------------------------------------------------------------------------------------
# heavyball 3.2.1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weight_decay", [0.0, WD])
def test_heavyball_adamw_mars(heavyball, dtype, weight_decay) -> None:
    b1, b2 = 0.95, 0.99
    k = GAMMA * b1 / (1 - b1)
    diff, top = run_pair(
        [(16, 12), (8, 24)],
        dtype,
        lambda ps: orthoptim.build(
            "mars_adamw", ps, lr=LR, weight_decay=weight_decay, gamma=GAMMA, eps=1e-30, clip=None
        ),
        lambda ps: heavyball.AdamW(
            ps,
            lr=LR,
            betas=(b1, b2),
            eps=1e-30,
            weight_decay=weight_decay,
            mars=True,
            mars_gamma=k / (b1 + k),
            storage_dtype="float64" if dtype == torch.float64 else "float32",
        ),
        "heavyball AdamW(mars=True)",
    )
    # Equal updates up to the debias rounding (a few ulp of |u| <= ~1 each step) and p's rounding.
    assert diff <= roundoff(dtype, top, ulps=2.0)


# --------------------------------------------------------------------------------------------
# pytorch-optimizer 4.1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, None])
def test_pytorch_optimizer_mars_adamw(pytorch_optimizer_plain_sqrt, dtype, foreach) -> None:
    # eps = 1e-30 on both sides is below an ulp of sqrt(v_hat), where its placement (before or
    # after debiasing) no longer matters; with sqrt(v + 1e-15) left in, the measured difference
    # is 4.5e-7 (float64), from the elements whose v is near 1e-15.
    diff, top = run_pair(
        [(16, 12), (8, 24)],
        dtype,
        lambda ps: orthoptim.build("mars_adamw", ps, lr=LR, weight_decay=WD, eps=1e-30),
        lambda ps: pytorch_optimizer_plain_sqrt.MARS(
            ps, lr=LR, weight_decay=WD, mars_type="adamw", eps=1e-30, foreach=foreach
        ),
        f"pytorch-optimizer MARS adamw foreach={foreach}",
    )
    # Same correction, clip and moments; the denominator's operation order and the decay (it
    # scales p, then steps) round differently: a few ulp of |p| per step.
    assert diff <= roundoff(dtype, top, ulps=4.0)


def _with_role(ps: list[torch.Tensor]) -> list[dict]:
    return [
        {"params": [p for p in ps if p.ndim >= 2], "role": "hidden"},
        {"params": [p for p in ps if p.ndim < 2], "role": "vector"},
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pytorch_optimizer_mars_plan_with_vectors(pytorch_optimizer_plain_sqrt, dtype) -> None:
    # optimize_1d=False: 1-D parameters get AdamW with betas_1d = (0.9, 0.95), lr_1d and
    # weight_decay_1d = 0.1, which is MARS_ADAMW's route (lr_scale = lr_1d / lr = 1).
    diff, top = run_pair(
        [(16, 12), (12,), (8, 24), (24,)],
        dtype,
        lambda ps: ChainOptimizer(
            _with_role(ps),
            with_adamw(
                mars_adamw(eps=1e-30),
                name="mars",
                adamw_route=MARS_ADAMW.options({"adamw_eps": 1e-30}),
            ),
            lr=LR,
            weight_decay=WD,
        ),
        lambda ps: pytorch_optimizer_plain_sqrt.MARS(
            ps, lr=LR, lr_1d=LR, weight_decay=WD, weight_decay_1d=0.1, mars_type="adamw", eps=1e-30
        ),
        "pytorch-optimizer MARS adamw + 1-D AdamW",
    )
    assert diff <= roundoff(dtype, top, ulps=4.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weight_decay", [0.0, WD])
def test_pytorch_optimizer_mars_lion(pytorch_optimizer, dtype, weight_decay) -> None:
    diff, top = run_pair(
        [(16, 12), (8, 24)],
        dtype,
        lambda ps: orthoptim.build("mars_lion", ps, lr=LR, weight_decay=weight_decay),
        lambda ps: pytorch_optimizer.MARS(
            ps, lr=LR, betas=(0.95, 0.99), weight_decay=weight_decay, mars_type="lion"
        ),
        "pytorch-optimizer MARS lion",
    )
    # Same lerp and the same clip on the same bits: identical signs, so identical updates; with
    # decay only p's rounding differs (it decays, then steps).
    if weight_decay == 0.0:
        assert diff == 0.0
    else:
        assert diff <= roundoff(dtype, top, ulps=2.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mars_lion_with_gamma_zero_is_pytorch_optimizer_lion(pytorch_optimizer, dtype) -> None:
    betas = (0.9, 0.99)  # Lion's own defaults, b1 != b2
    diff, _ = run_pair(
        [(16, 12), (8, 24)],
        dtype,
        lambda ps: orthoptim.build("mars_lion", ps, lr=LR, gamma=0.0, clip=None, betas=betas),
        lambda ps: pytorch_optimizer.Lion(ps, lr=LR, betas=betas),
        "pytorch-optimizer Lion vs mars_lion(gamma=0)",
    )
    assert diff == 0.0


# --------------------------------------------------------------------------------------------
# naive oracle: arXiv 2411.10438's algorithm, pinned to AGI-Arena/MARS@4831e28's conventions


def oracle_mars(
    x0: list[float],
    grad: Callable[[list[float], int], list[float]],
    steps: int,
    *,
    instance: str,
    variant: str,
    lr: float,
    wd: float,
    gamma: float,
    beta1: float,
    beta2: float,
    eps: float,
    clip: float,
) -> list[list[float]]:
    """Parameters after each step. ``grad(x, t)`` is the gradient at ``x`` on batch ``t``."""
    n = len(x0)
    x, x_before = list(x0), list(x0)
    m, v = [0.0] * n, [0.0] * n
    g_last = [0.0] * n  # the reference's zero "last_grad" before the first step
    out = []
    for t in range(1, steps + 1):
        g = grad(x, t)
        g_prev = g_last  # approximate: the previous batch's gradient
        if variant == "exact":  # the current batch at the previous point
            g_prev = grad(x_before, t) if t > 1 else [0.0] * n
        c = [g[i] + gamma * beta1 / (1 - beta1) * (g[i] - g_prev[i]) for i in range(n)]
        norm = math.sqrt(sum(ci * ci for ci in c))
        if norm > clip:
            c = [ci / norm * clip for ci in c]
        u = [0.0] * n
        for i in range(n):
            m[i] = beta1 * m[i] + (1 - beta1) * c[i]
            if instance == "adamw":
                v[i] = beta2 * v[i] + (1 - beta2) * c[i] * c[i]
                m_hat = m[i] / (1 - beta1**t)
                v_hat = v[i] / (1 - beta2**t)
                u[i] = m_hat / (math.sqrt(v_hat) + eps)
            else:  # lion: H_t = sqrt(diag(m_t^2)), i.e. sign(m_t)
                u[i] = (m[i] > 0) - (m[i] < 0)
        x_before = list(x)
        x = [x[i] - lr * (u[i] + wd * x[i]) for i in range(n)]
        g_last = g
        out.append(list(x))
    return out


SHAPE = (4, 6)


def _fixed(t_grads: list[torch.Tensor]) -> Callable[[list[float], int], list[float]]:
    return lambda x, t: t_grads[t - 1].flatten().tolist()


def _toy(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch t of the toy loss f(x; t) = sum_i a_ti (x_i - b_ti)^2 / 2 (a_ti in [0.5, 3])."""
    g = torch.Generator().manual_seed(1000 + t)
    a = torch.rand(SHAPE, generator=g, dtype=torch.float64) * 2.5 + 0.5
    return a, torch.randn(SHAPE, generator=g, dtype=torch.float64)


def _toy_grad(x: list[float], t: int) -> list[float]:
    """The toy loss's gradient by hand: a_ti (x_i - b_ti)."""
    a, b = (v.flatten().tolist() for v in _toy(t))
    return [a[i] * (x[i] - b[i]) for i in range(len(x))]


@pytest.mark.parametrize("name", ["mars_adamw", "mars_lion"])
@pytest.mark.parametrize("variant", ["approximate", "exact"])
@pytest.mark.parametrize("scale", [1.0, 0.01])  # clip active / inactive
def test_oracle(name, variant, scale) -> None:
    x0 = fixed_grads(SHAPE, 1, torch.float64, seed=7)[0]
    lr = 2e-2
    p = x0.clone().requires_grad_()
    opt = orthoptim.build(name, [p], lr=lr, weight_decay=WD, variant=variant)
    expected = oracle_mars(
        x0.flatten().tolist(),
        lambda x, t: [scale * gi for gi in _toy_grad(x, t)],
        STEPS,
        instance=name.removeprefix("mars_"),
        variant=variant,
        lr=lr,
        wd=WD,
        gamma=GAMMA,
        beta1=0.95,
        beta2=0.99,
        eps=1e-8,
        clip=1.0,
    )
    diff = 0.0
    for t in range(1, STEPS + 1):

        def closure(t: int = t) -> torch.Tensor:
            p.grad = None
            a, b = _toy(t)
            loss = scale * (a * (p - b) ** 2).sum() / 2
            loss.backward()
            return loss

        opt.step(closure)
        diff = max(
            diff,
            (p.detach().flatten() - torch.tensor(expected[t - 1], dtype=torch.float64))
            .abs()
            .max()
            .item(),
        )
    print(f"oracle {name} {variant} scale {scale}: max |dp| {diff:.3g}")
    # Same formulas, different operation order: a few ulp of |p| <= ~3 per step, amplified at
    # most mildly by Adam's division (sign flips of Lion's m would show as 2 lr, far above this).
    assert diff <= 1e-12


@pytest.mark.parametrize("name", ["mars_adamw", "mars_lion"])
def test_oracle_on_fixed_gradients_float32(name) -> None:
    grads = fixed_grads(SHAPE, STEPS, torch.float64, seed=3)
    x0 = fixed_grads(SHAPE, 1, torch.float64, seed=8)[0]
    expected = oracle_mars(
        x0.flatten().tolist(),
        _fixed(grads),
        STEPS,
        instance=name.removeprefix("mars_"),
        variant="approximate",
        lr=LR,
        wd=WD,
        gamma=GAMMA,
        beta1=0.95,
        beta2=0.99,
        eps=1e-8,
        clip=1.0,
    )
    p = x0.float().requires_grad_()
    opt = orthoptim.build(name, [p], lr=LR, weight_decay=WD)
    diff = 0.0
    for t in range(STEPS):
        p.grad = grads[t].float()
        opt.step()
        diff = max(
            diff,
            (p.detach().double().flatten() - torch.tensor(expected[t], dtype=torch.float64))
            .abs()
            .max(),
        )
    print(f"oracle {name} float32: max |dp| {float(diff):.3g}")
    # float32 inputs (gradients rounded once) and arithmetic: ~1e-7 relative per step on |p| <~ 3.
    assert diff <= STEPS * 4 * torch.finfo(torch.float32).eps * 3


def test_oracle_exact_sees_the_whole_model_at_its_previous_point() -> None:
    # With the plan, the closure's first evaluation of step t sees every parameter (matrices via
    # MARS, vectors via the AdamW route's recorder) as it was before step t-1 updated it.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    opt = orthoptim.build("mars_adamw", model, variant="exact")
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    seen: list[list[torch.Tensor]] = []

    def closure() -> torch.Tensor:
        seen.append([p.detach().clone() for p in model.parameters()])
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    history = []
    for _ in range(3):
        history.append([p.detach().clone() for p in model.parameters()])
        opt.step(closure)
    # Calls: step 1 once (no previous point yet), steps 2 and 3 twice (previous, then current).
    assert len(seen) == 5
    expected = [history[0], history[0], history[1], history[1], history[2]]
    for call, values in enumerate(expected):
        for a, b in zip(seen[call], values, strict=True):
            assert torch.equal(a, b)
