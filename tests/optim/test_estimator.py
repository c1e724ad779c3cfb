"""The plan-level gradient estimator (``transforms.estimator``, ``orthoptim.oracle``): the
shell's closure oracle, the estimate as the routes' gradient, estimator state in checkpoints,
and the refusals, with small estimators written here (the registered ones have their own
tests)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from orthoptim import ChainOptimizer
from orthoptim.nonfinite import NonFiniteGradientError
from orthoptim.recipes import adamw, estimated, mars_adamw, sgd
from orthoptim.transforms import EstimatorGroup, GradientEstimator, LossOracle
from orthoptim.transforms.estimator import regroup


@dataclass(frozen=True)
class ShiftedGradient(GradientEstimator):
    """The gradient at ``theta - shift * g`` (a descent look-ahead), and a count of steps."""

    shift: float = 0.5

    def init(self, p: Tensor) -> dict[str, Tensor]:
        return {"count": torch.zeros((), dtype=torch.float64)}

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        params = [p for g in groups for p in g.params]
        grads = [g for group in groups for g in group.grads]
        points = {
            p: p - self.shift * g for p, g in zip(params, grads, strict=True) if g is not None
        }
        _, found = oracle.gradients_at(points, params)
        for group in groups:
            for own in group.states:
                own["count"] += 1
        return regroup(groups, found)


@dataclass(frozen=True)
class ForwardDifferences(GradientEstimator):
    """Zeroth order: each coordinate's forward difference of the loss."""

    closure_backward: ClassVar[bool] = False
    mu: float = 1e-6

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        base = oracle.loss
        assert base is not None
        out = []
        for group in groups:
            found = []
            for p in group.params:
                g = torch.zeros_like(p)
                for i in range(p.numel()):
                    point = p.detach().clone()
                    point.view(-1)[i] += self.mu
                    g.view(-1)[i] = (oracle.loss_at({p: point}) - base) / self.mu
                found.append(g)
            out.append(found)
        return out


@dataclass(frozen=True)
class HessianTimesGradient(GradientEstimator):
    """``H g`` from the oracle's Hessian-vector products."""

    needs_graph: ClassVar[bool] = True

    def estimate(
        self, oracle: LossOracle, groups: Sequence[EstimatorGroup], step: int
    ) -> list[list[Tensor]]:
        out = []
        for group in groups:
            vectors = {
                p: g.detach()
                for p, g in zip(group.params, group.grads, strict=True)
                if g is not None
            }
            products = oracle.hessian_vector_products(vectors)
            out.append([products[p] for p in group.params])
        return out


def _problem(seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    return model, x, y


def _closure(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    graph: bool = False,
    backward: bool = True,
    set_to_none: bool = True,
) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        opt.zero_grad(set_to_none=set_to_none)
        loss = ((model(x) - y) ** 2).mean()
        if backward:
            loss.backward(create_graph=graph)
        return loss

    return closure


def _loss_of(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_estimate_is_the_gradient_the_route_steps_on(set_to_none: bool) -> None:
    model, x, y = _problem()
    twin = copy.deepcopy(model)
    first_loss = _loss_of(twin, x, y).detach()
    opt = ChainOptimizer(
        model.parameters(), estimated(sgd(momentum=0.0, nesterov=False), ShiftedGradient()), lr=0.1
    )
    closure = _closure(model, opt, x, y, set_to_none=set_to_none)
    loss = opt.step(closure)
    # by hand: the gradient g at theta, then the gradient at theta - 0.5 g, then SGD
    params = list(twin.parameters())
    g = torch.autograd.grad(_loss_of(twin, x, y), params)
    with torch.no_grad():
        for p, gi in zip(params, g, strict=True):
            p -= 0.5 * gi
    g2 = torch.autograd.grad(_loss_of(twin, x, y), params)
    with torch.no_grad():
        for p, gi, g2i in zip(params, g, g2, strict=True):
            p += 0.5 * gi - 0.1 * g2i
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)
        assert p.grad is not None
    assert torch.equal(loss.detach(), first_loss)  # the step returns the closure's first loss
    assert all(float(opt.state[p]["estimator.count"]) == 1.0 for p in model.parameters())


def test_a_plan_with_routes_gets_one_estimate_for_every_route() -> None:
    from orthoptim import build

    model, x, y = _problem()
    base = build("muon", model).plan
    opt = ChainOptimizer(model, estimated(base, ShiftedGradient()), lr=0.02)
    counts = []
    inner = _closure(model, opt, x, y)

    def closure() -> Tensor:
        counts.append(1)
        return inner()

    opt.step(closure)
    assert len(counts) == 2  # the step's own evaluation and the estimator's one
    assert {g["route"] for g in opt.param_groups} == {"muon", "adamw"}


def test_zeroth_order_estimate_with_a_closure_that_calls_no_backward() -> None:
    model, x, y = _problem()
    opt = ChainOptimizer(
        model.parameters(),
        estimated(sgd(momentum=0.0, nesterov=False), ForwardDifferences()),
        lr=0.1,
    )
    before = [p.detach().clone() for p in model.parameters()]
    exact = torch.autograd.grad(_loss_of(model, x, y), list(model.parameters()))
    opt.step(_closure(model, opt, x, y, backward=False))
    for p, b, g in zip(model.parameters(), before, exact, strict=True):
        torch.testing.assert_close((b - p) / 0.1, g, rtol=0, atol=1e-5)


def test_hessian_vector_products_from_the_closure_graph() -> None:
    model, x, y = _problem()
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    sizes = [p.numel() for p in params]

    def loss_of_flat(v: Tensor) -> Tensor:
        chunks = torch.split(v, sizes)
        shaped = {
            n: c.view_as(p) for (n, p), c in zip(model.named_parameters(), chunks, strict=True)
        }
        out = torch.func.functional_call(model, shaped, (x,))
        return ((out - y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss_of_flat, flat)
    gradient = torch.autograd.functional.jacobian(loss_of_flat, flat)
    opt = ChainOptimizer(
        params, estimated(sgd(momentum=0.0, nesterov=False), HessianTimesGradient()), lr=1.0
    )
    opt.step(_closure(model, opt, x, y, graph=True))
    step = flat - torch.cat([p.detach().reshape(-1) for p in params])
    torch.testing.assert_close(step, hessian @ gradient, rtol=1e-10, atol=1e-12)
    assert all(p.grad is not None and p.grad.grad_fn is None for p in params)


def test_needs_graph_without_one_refuses_before_anything_changes() -> None:
    model, x, y = _problem()
    opt = ChainOptimizer(
        model.parameters(),
        estimated(sgd(momentum=0.0, nesterov=False), HessianTimesGradient()),
        lr=1.0,
    )
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="create_graph=True"):
        opt.step(_closure(model, opt, x, y))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_no_closure_is_refused_naming_what_the_closure_must_do() -> None:
    model, _, _ = _problem()
    opt = ChainOptimizer(model.parameters(), estimated(sgd(), ShiftedGradient()), lr=0.1)
    with pytest.raises(ValueError, match=r"calls loss\.backward"):
        opt.step()
    zo = ChainOptimizer(model.parameters(), estimated(sgd(), ForwardDifferences()), lr=0.1)
    with pytest.raises(ValueError, match="without calling backward"):
        zo.step()
    assert not opt.state and not zo.state


def test_closure_error_restores_parameters_and_gradients() -> None:
    model, x, y = _problem()
    opt = ChainOptimizer(model.parameters(), estimated(sgd(), ShiftedGradient()), lr=0.1)
    calls = []
    inner = _closure(model, opt, x, y)

    def closure() -> Tensor:
        calls.append(1)
        if len(calls) == 2:
            opt.zero_grad(set_to_none=False)
            raise RuntimeError("data loader failed")
        return inner()

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="data loader"):
        opt.step(closure)
    grads = torch.autograd.grad(_loss_of(model, x, y), list(model.parameters()))
    for p, b, g in zip(model.parameters(), before, grads, strict=True):
        assert torch.equal(p, b)
        assert p.grad is not None
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-15)


def test_non_finite_estimate_is_refused_and_changes_nothing() -> None:
    model, x, y = _problem()
    opt = ChainOptimizer(
        model.parameters(), estimated(adamw(), ShiftedGradient(shift=1e308)), lr=0.1
    )
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteGradientError):
        opt.step(_closure(model, opt, x, y))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_estimator_state_resumes_bit_exactly() -> None:
    model, x, y = _problem()
    make = lambda m: ChainOptimizer(m.parameters(), estimated(adamw(), ShiftedGradient()), lr=0.01)  # noqa: E731
    opt = make(model)
    for _ in range(2):
        opt.step(_closure(model, opt, x, y))
    saved = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    resumed = make(twin)
    resumed.load_state_dict(saved)
    for m, o in ((model, opt), (twin, resumed)):
        for _ in range(2):
            o.step(_closure(m, o, x, y))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert float(resumed.state[next(twin.parameters())]["estimator.count"]) == 4.0


def test_refusals() -> None:
    model, _, _ = _problem()
    with pytest.raises(ValueError, match="one estimator per plan"):
        estimated(estimated(sgd(), ShiftedGradient()), ShiftedGradient())
    with pytest.raises(ValueError, match="previous points"):
        estimated(mars_adamw(variant="exact"), ShiftedGradient())
    with pytest.raises(ValueError, match="capturable"):
        ChainOptimizer(
            model.parameters(), estimated(sgd(), ShiftedGradient()), lr=0.1, capturable=True
        )


def test_plan_reports_what_the_closure_must_do() -> None:
    plan = estimated(sgd(), ShiftedGradient())
    assert plan.needs_closure and plan.closure_backward and not plan.needs_graph
    assert estimated(sgd(), HessianTimesGradient()).needs_graph
    assert not estimated(sgd(), ForwardDifferences()).closure_backward
    assert "gradient: ShiftedGradient" in plan.explain()


def test_show_names_the_estimator_of_every_registered_plan_that_has_one() -> None:
    from orthoptim import registry

    estimated_names = [
        n for n in registry.names() if registry.get(n).whole_model_plan().estimator is not None
    ]
    assert estimated_names  # smb and saddle_free_newton at least
    for name in estimated_names:
        estimator = registry.get(name).whole_model_plan().estimator
        assert f"gradient:  {estimator!r}" in registry.show(name)


class _CopyCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten copies (``copy_``, ``clone``) dispatched while open."""

    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.copy_, torch.ops.aten.clone):
            self.copies += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("set_to_none", [True, False])
def test_the_oracle_copies_no_parameter_and_no_gradient(set_to_none: bool) -> None:
    """Moving the parameters to a point and back, and keeping the step's gradients from the
    closure, cost no copy: an evaluation dispatches the copies of the closure alone."""
    from orthoptim.oracle import ClosureOracle

    model, x, y = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    closure = _closure(model, opt, x, y, set_to_none=set_to_none)
    loss = closure()
    params = list(model.parameters())
    step_grads = [p.grad for p in params]
    values = [g.clone() for g in step_grads]
    points = {p: p.detach() + 1.0 for p in params}
    with _CopyCounter() as alone:
        closure()
    for p, g, v in zip(params, step_grads, values, strict=True):
        p.grad = g
        g.copy_(v)
    oracle = ClosureOracle(closure, params, loss, graph=False)
    before = [p.detach().clone() for p in params]
    with _CopyCounter() as evaluation:
        _, found = oracle.gradients_at(points, params)
    assert evaluation.copies == alone.copies
    for p, b, g, v in zip(params, before, step_grads, values, strict=True):
        assert torch.equal(p, b) and p.grad is g and torch.equal(g, v)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for q in moved.parameters():
            q += 1.0
    expected = torch.autograd.grad(_loss_of(moved, x, y), list(moved.parameters()))
    for f, e in zip(found, expected, strict=True):
        torch.testing.assert_close(f, e, rtol=0, atol=1e-14)
