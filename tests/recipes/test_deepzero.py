"""DeepZero: the optimizer against a naive oracle of the reference's algorithm (float64), the
ZO-GraSP mask (computed once, layer-wise shares from global pruning), evaluations per step,
bit-exact resumes, and convergence.

The authors' code (OPTML-Group/DeepZero@5cf30b1) is a set of training scripts (RPC workers,
CIFAR loaders), not a package, so it is not run here: ``_oracle_step`` follows its ``cge``
(``algorithm/zoo/gradient_estimate.py``: a copy of the parameters per coordinate, moved by
``mu``, ``(f - f(w)) / mu``) and its ``torch.optim.SGD`` step, with ``torch.func`` instead of
``load_state_dict``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim.transforms.deepzero import step_generator
from tests.functional.test_deepzero import _reference_rge
from tests.helpers import straight_and_resumed

F64 = torch.float64


def _batches(steps: int, seed: int = 0, dtype: torch.dtype = F64):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 3, generator=g, dtype=dtype), torch.randn(16, 2, generator=g, dtype=dtype))
        for _ in range(steps)
    ]


def _tiny(dtype: torch.dtype = F64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)


def _loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _oracle_step(model, sgd, batch, masks, mu) -> None:
    """One step of the reference's algorithm: CGE over the coordinates ``masks`` keep, then
    ``torch.optim.SGD``."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}

    def f(values) -> float:
        with torch.no_grad():
            return float(_loss_functional(model, values, batch))

    base = f(params)
    for name, p in model.named_parameters():
        grad = torch.zeros_like(p)
        for idx in masks[name].reshape(-1).nonzero().reshape(-1).tolist():
            moved = {k: v.clone() for k, v in params.items()}
            moved[name].view(-1)[idx] += mu
            grad.view(-1)[idx] = (f(moved) - base) / mu
        p.grad = grad
    assert names
    sgd.step()


def _loss_functional(model, values, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(torch.func.functional_call(model, values, (x,)), y)


def _closure(model, batch, calls=None):
    def closure() -> torch.Tensor:
        if calls is not None:
            calls.append(1)
        return _loss(model, batch)

    return closure


@pytest.mark.parametrize(
    "options",
    [
        {"sparsity": 0.0},
        {"sparsity": 0.5, "grasp_samples": 6},
        {"sparsity": 0.6, "pruning": "random", "mask_every": 2},
    ],
    ids=["dense", "zo_grasp", "random-reshuffled"],
)
def test_deepzero_follows_the_reference_algorithm(options) -> None:
    """Float64, 6 steps, ``finite_step="nominal"`` (the reference's division by ``mu``): the
    oracle uses the masks our state holds at each step (the random placement is ours to draw);
    everything else is computed independently."""
    mu, lr, wd = 5e-3, 0.1, 5e-4
    ours, theirs = _tiny(), _tiny()
    opt = orthoptim.build(
        "deepzero", ours, lr=lr, weight_decay=wd, mu=mu, finite_step="nominal", **options
    )
    sgd = torch.optim.SGD(theirs.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    worst = 0.0
    for batch in _batches(6):
        opt.step(_closure(ours, batch))
        masks = {n: opt.state[p]["estimator.mask"] for n, p in ours.named_parameters()}
        _oracle_step(theirs, sgd, batch, masks, mu)
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            worst = max(worst, float((a - b).abs().max()))
    print(f"deepzero vs the reference's algorithm {options}: max abs diff {worst:.1e}")
    assert worst <= 1e-13


def test_the_zo_grasp_shares_are_global_pruning_of_the_reference_scores() -> None:
    """The first step's kept count per matrix equals the count global magnitude pruning of
    ZO-GraSP's scores ``-w (RGE(w + mu g0) - g0) / mu`` keeps there (scores from the reference's
    RGE loop with the step-1 generator); vectors keep everything."""
    model, batch, samples, mu = _tiny(), _batches(1)[0], 8, 5e-3
    weights = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]

    def f(ws) -> torch.Tensor:
        values = dict(model.named_parameters()) | {"0.weight": ws[0], "2.weight": ws[1]}
        with torch.no_grad():
            return _loss_functional(model, {k: v.detach() for k, v in values.items()}, batch)

    gen = step_generator(0, 1, 0, torch.device("cpu"))
    g0 = _reference_rge(f, weights, samples, mu, gen)
    g1 = _reference_rge(f, [w + mu * g for w, g in zip(weights, g0, strict=True)], samples, mu, gen)
    scores = [(-w * (a - b) / mu).abs() for w, a, b in zip(weights, g1, g0, strict=True)]
    keep = round(0.5 * 25)
    threshold = torch.cat([s.reshape(-1) for s in scores]).sort(descending=True).values[keep - 1]
    expected = [int((s >= threshold).sum()) for s in scores]

    opt = orthoptim.build("deepzero", model, sparsity=0.5, grasp_samples=samples, mu=mu)
    opt.step(_closure(model, batch))
    got = [int(opt.state[p]["estimator.mask"].sum()) for p in (model[0].weight, model[2].weight)]
    assert got == expected and sum(got) == keep
    assert expected != [round(0.5 * 15), round(0.5 * 10)]  # the shares differ from uniform
    assert all(bool(opt.state[p]["estimator.mask"].all()) for p in (model[0].bias, model[2].bias))


def test_the_mask_is_computed_once_and_each_step_evaluates_one_forward_per_coordinate() -> None:
    model = _tiny()
    opt = orthoptim.build("deepzero", model, sparsity=0.6, grasp_samples=5)
    masks, counts = [], []
    for batch in _batches(4):
        calls: list[int] = []
        opt.step(_closure(model, batch, calls))
        counts.append(len(calls))
        masks.append([opt.state[p]["estimator.mask"].clone() for p in model.parameters()])
    kept = sum(int(m.sum()) for m in masks[0])
    assert kept == round(0.4 * 15) + round(0.4 * 10) + 5 + 2
    # the shell's call, ZO-GraSP's 2 (5 + 1) - 1 (its base is the shell's), one per coordinate
    assert counts == [1 + 11 + kept] + [1 + kept] * 3
    for later in masks[1:]:
        assert all(torch.equal(a, b) for a, b in zip(masks[0], later, strict=True))


def test_coordinates_per_step_estimates_that_many_kept_coordinates() -> None:
    model = _tiny()
    opt = orthoptim.build("deepzero", model, sparsity=0.0, coordinates_per_step=7)
    seen = []
    for batch in _batches(3):
        calls: list[int] = []
        opt.step(_closure(model, batch, calls))
        assert len(calls) == 1 + 7
        grads = [p.grad for p in model.parameters()]
        assert sum(int((g != 0).sum()) for g in grads) == 7
        seen.append(torch.cat([(g != 0).reshape(-1) for g in grads]))
    assert not torch.equal(seen[0], seen[1])  # a new subset each step


def _train(model, opt, steps) -> None:
    batches = _batches(8, dtype=torch.float32)
    for s in steps:
        opt.step(_closure(model, batches[s]))


@pytest.mark.parametrize("split", [1, 3])
def test_a_resumed_run_is_bit_exact(split) -> None:
    """The mask and every step-seeded draw (mask placement, coordinate subsets) resume."""

    def make_opt(model):
        return orthoptim.build(
            "deepzero", model, grasp_samples=4, mask_every=2, coordinates_per_step=9
        )

    straight, s_opt, resumed, r_opt = straight_and_resumed(
        lambda: _tiny(torch.float32), make_opt, _train, split, 6
    )
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(s_opt.state[p]["estimator.mask"], r_opt.state[q]["estimator.mask"])


def test_a_step_without_a_closure_is_refused() -> None:
    model = _tiny()
    opt = orthoptim.build("deepzero", model)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def _teacher(seed: int = 0):
    """A 8-8-2 tanh teacher and a fresh student of its shape (90 + 10 parameters), 64 inputs:
    ``teacher_student.random_teacher`` scaled down, as CGE costs a forward pass per parameter."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))

    teacher = net()
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1)
            )
        y = teacher(x)
    torch.manual_seed(seed)
    return x, y, net()


def _fit(name: str, steps: int, **options) -> list[float]:
    x, y, model = _teacher()
    opt = orthoptim.build(name, model, lr=0.1, **options)
    losses = []
    for _ in range(steps):
        if name == "deepzero":
            loss = opt.step(lambda: nn.functional.mse_loss(model(x), y))
        else:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        losses.append(float(loss))
    return losses


def test_dense_deepzero_tracks_sgd_on_exact_gradients() -> None:
    """Dense CGE at ``mu = 1e-4`` against the same SGD (momentum 0.9, weight decay 5e-4) on
    backprop gradients, 100 full-batch steps: final losses within 2% (measured 0.15%), both
    under 5% of the initial loss (measured 1.6%)."""
    sgd = _fit("sgd", 100, momentum=0.9, nesterov=False, weight_decay=5e-4)
    zo = _fit("deepzero", 100, sparsity=0.0, mu=1e-4)
    print(f"deepzero dense {zo[-1]:.5f} vs sgd {sgd[-1]:.5f} (start {sgd[0]:.3f})")
    assert zo[-1] == pytest.approx(sgd[-1], rel=0.02)
    assert zo[-1] < 0.05 * zo[0] and sgd[-1] < 0.05 * sgd[0]


def test_sparse_deepzero_converges() -> None:
    """Half of each matrix kept (random shares), 100 steps: under 5% of the initial loss
    (measured 2.9%)."""
    zo = _fit("deepzero", 100, sparsity=0.5, pruning="random")
    assert zo[-1] < 0.05 * zo[0]


def test_the_realized_step_default_stays_within_a_tenth_of_a_percent_of_the_reference() -> None:
    """``finite_step="realized"`` (the default) against ``"nominal"`` (the reference's division
    by ``mu``) in float32, 100 steps: final losses within 0.1% (measured 0.004%)."""
    realized = _fit("deepzero", 100, sparsity=0.5, pruning="random")
    nominal = _fit("deepzero", 100, sparsity=0.5, pruning="random", finite_step="nominal")
    print(f"deepzero realized {realized[-1]:.6f} vs nominal {nominal[-1]:.6f}")
    assert realized[-1] == pytest.approx(nominal[-1], rel=1e-3)
    assert nominal[-1] < 0.05 * nominal[0]


def test_bfloat16_parameters_get_an_estimate_where_the_move_rounds_away() -> None:
    """In bfloat16, ``w + 5e-3`` rounds back to ``w`` from ``|w| >= 2``: the reference's division
    by ``mu`` estimates 0 there; the realized step does not."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.5, -3.0, 1.0, 0.25]]))
    x = torch.randn(8, 4, dtype=torch.bfloat16)
    exact = x.float().mean(0)  # d/dw of mean(x w^T) + b

    def grad_of(finite_step: str) -> torch.Tensor:
        opt = orthoptim.build("deepzero", model, lr=0.0, sparsity=0.0, finite_step=finite_step)
        # the loss in float32 of the bfloat16 weights: the rounding under test is the move's
        opt.step(lambda: (x.float() @ model.weight.float().T).mean() + model.bias.float().sum())
        return model.weight.grad.float().reshape(-1)

    nominal, realized = grad_of("nominal"), grad_of("realized")
    assert nominal[0] == 0 and nominal[1] == 0  # the move rounded away: silently 0
    assert torch.allclose(realized, exact, rtol=2**-7, atol=0)  # .grad is bfloat16
