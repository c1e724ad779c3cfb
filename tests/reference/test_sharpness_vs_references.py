"""sam and gam against their authors' code, transcribed, and sam against pytorch-optimizer's SAM.

The transcriptions below restate, as plain loops over a model and a closure, the ``step`` of

* davda54/sam@3c3afdbd71cff2462ec91c734b3d1170bd0f3707 ``sam.py`` ``SAM`` (``first_step``:
  ``e = rho (p^2 if adaptive) g / (||(|p| if adaptive) g|| + 1e-12)``, the closure at ``w + e``,
  ``second_step``: back to ``w``, then the base optimizer), and
* xxgege/GAM@694133d9df9266a3df892087ca6b1be72ba610c0 ``gam/gam.py`` ``GAM.step`` (four
  gradients: ``g0`` at ``w``; ``g1`` at ``w + grad_rho g0/||g0||``; ``g2`` at
  ``w + grad_norm_rho h/||h||``, ``h = g1 - g0``; ``g3`` one more ``grad_rho`` step along ``g2``
  from there; then ``gradient_decompose``: ``d = beta_1 g1 + beta_3 g3``,
  ``m = g0 + |beta_2| g2``, ``d - grad_gamma (m - cos(m, d) ||m|| d / ||d||)``),

driving ``torch.optim.SGD``, the base optimizer both papers and repositories use. The GAM code's
weights are not the paper's convex ones: ``d = (beta_1 + beta_3) h+`` with
``alpha = beta_1 / (beta_1 + beta_3)``, ``m = (1 + |beta_2|) h-`` with
``beta = 1 / (1 + |beta_2|)``, so its direction is ``(beta_1 + beta_3)`` times the paper's with
``gamma = grad_gamma (1 + |beta_2|) / (beta_1 + beta_3)``: at its defaults (all 1) twice ours with
the same gamma: SGD then takes the same steps with ours at twice the reference's lr and half
its weight decay (its momentum buffer is twice ours).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from torch import nn

import orthoptim

pytestmark = pytest.mark.reference

STEPS = 6
LR = 2.0**-4
WD = 2.0**-7
EPS = 1e-12


def problem(seed: int = 0) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """A small float64 tanh MLP and its full-batch loss (deterministic closures)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()

    def loss(m: nn.Module) -> torch.Tensor:
        return nn.functional.mse_loss(m(x), y)

    return model, loss


def closure_for(model: nn.Module, loss: Callable[[nn.Module], torch.Tensor], opt) -> Callable:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss(model)
        value.backward()
        return value

    return closure


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(torch.sum(t * t) for t in tensors))


class TranscribedSAM:
    """davda54/sam@3c3afdb ``SAM.step`` over all parameters, base ``torch.optim.SGD``."""

    def __init__(self, params, rho: float, adaptive: bool, **sgd) -> None:
        self.params = list(params)
        self.rho, self.adaptive = rho, adaptive
        self.base = torch.optim.SGD(self.params, **sgd)

    def zero_grad(self) -> None:
        self.base.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor]) -> None:
        with torch.enable_grad():
            closure()  # the user's first forward-backward, at w
        with torch.no_grad():
            weighted = [(p.abs() if self.adaptive else 1.0) * p.grad for p in self.params]
            scale = self.rho / (_norm(weighted) + EPS)
            old = [p.clone() for p in self.params]
            for p in self.params:
                p.add_((p * p if self.adaptive else 1.0) * p.grad * scale)
        self.zero_grad()
        with torch.enable_grad():
            closure()  # at w + e
        with torch.no_grad():
            for p, o in zip(self.params, old, strict=True):
                p.copy_(o)
        self.base.step()


class TranscribedGAM:
    """xxgege/GAM@694133d ``GAM.step`` over all parameters, base ``torch.optim.SGD``."""

    def __init__(
        self,
        params,
        *,
        grad_rho: float,
        grad_norm_rho: float,
        grad_beta_1: float,
        grad_beta_2: float,
        grad_beta_3: float,
        grad_gamma: float,
        adaptive: bool,
        **sgd,
    ) -> None:
        self.params = list(params)
        self.rho, self.norm_rho = grad_rho, grad_norm_rho
        self.b1, self.b2, self.b3, self.gamma = grad_beta_1, grad_beta_2, grad_beta_3, grad_gamma
        self.adaptive = adaptive
        self.base = torch.optim.SGD(self.params, **sgd)

    def zero_grad(self) -> None:
        self.base.zero_grad()

    def _grads(self, closure) -> list[torch.Tensor]:
        self.zero_grad()
        with torch.enable_grad():
            closure()
        return [p.grad.detach().clone() for p in self.params]

    def _climb(self, direction: list[torch.Tensor], radius: float) -> list[torch.Tensor]:
        """Adds the step ``radius d / ||d||`` (adaptive: weighted by ``|p|``, ``p^2``) in place
        at the current parameters; returns it."""
        with torch.no_grad():
            weights = [p.abs() if self.adaptive else 1.0 for p in self.params]
            scale = radius / (_norm([w * d for w, d in zip(weights, direction, strict=True)]) + EPS)
            steps = [
                (p * p if self.adaptive else 1.0) * d * scale
                for p, d in zip(self.params, direction, strict=True)
            ]
            for p, s in zip(self.params, steps, strict=True):
                p.add_(s)
        return steps

    def step(self, closure: Callable[[], torch.Tensor]) -> None:
        g0 = self._grads(closure)
        e0 = self._climb(g0, self.rho)
        g1 = self._grads(closure)
        with torch.no_grad():
            for p, e in zip(self.params, e0, strict=True):
                p.sub_(e)
        h = [a - b for a, b in zip(g1, g0, strict=True)]
        e12 = self._climb(h, self.norm_rho)
        g2 = self._grads(closure)
        e3 = self._climb(g2, self.rho)
        g3 = self._grads(closure)
        with torch.no_grad():
            m = [a + abs(self.b2) * b for a, b in zip(g0, g2, strict=True)]
            d = [self.b1 * a + self.b3 * b for a, b in zip(g1, g3, strict=True)]
            inner = sum(torch.sum(a * b) for a, b in zip(m, d, strict=True))
            nd, nm = _norm(d), _norm(m)
            cosine = inner / (nd * nm + EPS)
            for p, a, b, e, f in zip(self.params, d, m, e12, e3, strict=True):
                p.grad = a - self.gamma * (b - cosine * nm * a / (nd + EPS))
                p.sub_(e + f)
        self.base.step()


def run(model, loss, opt, steps: int = STEPS) -> list[list[torch.Tensor]]:
    closure = closure_for(model, loss, opt)
    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append([p.detach().clone() for p in model.parameters()])
    return out


def max_diff(a, b) -> float:
    return max(
        float((x - y).abs().max())
        for xs, ys in zip(a, b, strict=True)
        for x, y in zip(xs, ys, strict=True)
    )


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_davda54_transcribed(adaptive: bool) -> None:
    rho = 0.5 if adaptive else 0.05
    model, loss = problem()
    ref = TranscribedSAM(model.parameters(), rho, adaptive, lr=LR, momentum=0.9, weight_decay=WD)
    expected = run(model, loss, ref)
    model, loss = problem()
    ours = orthoptim.build("sam", model, lr=LR, weight_decay=WD, rho=rho, adaptive=adaptive)
    diff = max_diff(run(model, loss, ours), expected)
    print(f"sam adaptive={adaptive} vs davda54: max |dp| {diff:.3g}")
    assert diff <= 1e-14


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_pytorch_optimizer(pytorch_optimizer: ModuleType, adaptive: bool) -> None:
    rho = 0.5 if adaptive else 0.05
    model, loss = problem()
    ref = pytorch_optimizer.SAM(
        model.parameters(),
        torch.optim.SGD,
        rho=rho,
        adaptive=adaptive,
        lr=LR,
        momentum=0.9,
        weight_decay=WD,
    )
    closure = closure_for(model, loss, ref)
    expected = []
    for _ in range(STEPS):
        closure()  # pytorch-optimizer's SAM reads the gradient at w from p.grad
        ref.step(closure)
        expected.append([p.detach().clone() for p in model.parameters()])
    model, loss = problem()
    ours = orthoptim.build("sam", model, lr=LR, weight_decay=WD, rho=rho, adaptive=adaptive)
    diff = max_diff(run(model, loss, ours), expected)
    print(f"sam adaptive={adaptive} vs pytorch-optimizer: max |dp| {diff:.3g}")
    # Its global norm is computed in float32 (``get_global_gradient_norm``), a ~1e-7 relative
    # change of the perturbation's length.
    assert diff <= 1e-8


@pytest.mark.parametrize("adaptive", [False, True])
def test_gam_matches_xxgege_transcribed(adaptive: bool) -> None:
    # The repository's main_cifar.py defaults: grad_rho 0.02, grad_norm_rho 0.2, betas 1, -1, 1,
    # grad_gamma 0.03 (larger radii for the adaptive variant, as ASAM's).
    rho, norm_rho = (0.2, 2.0) if adaptive else (0.02, 0.2)
    model, loss = problem()
    ref = TranscribedGAM(
        model.parameters(),
        grad_rho=rho,
        grad_norm_rho=norm_rho,
        grad_beta_1=1.0,
        grad_beta_2=-1.0,
        grad_beta_3=1.0,
        grad_gamma=0.03,
        adaptive=adaptive,
        lr=LR,
        momentum=0.9,
        weight_decay=WD,
    )
    expected = run(model, loss, ref)
    model, loss = problem()
    ours = orthoptim.build(
        "gam",
        model,
        lr=2 * LR,
        weight_decay=WD / 2,
        rho=rho,
        norm_rho=norm_rho,
        plus_weight=0.5,
        minus_weight=0.5,
        gamma=0.03,
        adaptive=adaptive,
    )
    diff = max_diff(run(model, loss, ours), expected)
    print(f"gam adaptive={adaptive} vs xxgege/GAM: max |dp| {diff:.3g}")
    assert diff <= 1e-13
