"""Matrix layouts: every matrix optimizer updates a weight stored (in, out) or as a stack of
matrices exactly as it updates the same matrices stored (out, in) one by one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim.functional.layout import matrices
from orthoptim.registry import REGISTRY

MATRIX = [s.name for s in REGISTRY if "matrix" in s.tags or "orthogonal" in s.tags]


class InOut(nn.Module):
    """``y = x W`` with ``W`` stored (in, out), declared like Hugging Face's ``Conv1D``."""

    orthoptim_layouts = {"weight": "in_out"}  # noqa: RUF012 - the declaration protocol

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class Stacked(nn.Module):
    """Mixture-of-experts style weights: ``(experts, out, in)``, used as ``F.linear(x, W[e])``."""

    orthoptim_layouts = {"weight": "stacked_out_in"}  # noqa: RUF012

    def __init__(self, experts: int, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, n_out, n_in) / n_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(nn.functional.linear(x, w) for w in self.weight.unbind(0))


def _steps(name: str, model: nn.Module, grads: list[torch.Tensor]) -> torch.Tensor:
    opt = orthoptim.build(name, model, lr=0.01, overrides={"*weight*": "hidden"})
    weight = next(p for n, p in model.named_parameters() if "weight" in n)
    before = weight.detach().clone()
    for g in grads:
        weight.grad = g.clone()
        opt.step()
    return (weight - before).detach()


@pytest.mark.parametrize("name", MATRIX)
@pytest.mark.parametrize(("n_out", "n_in"), [(24, 8), (8, 24)])
def test_an_in_out_weight_steps_as_its_out_in_twin(name: str, n_out: int, n_in: int) -> None:
    if orthoptim.registry.get(name).needs_module:
        pytest.skip("layer-hook optimizers: tests/transforms/test_capture_layers.py")
    torch.manual_seed(0)
    grads = [torch.randn(n_out, n_in) for _ in range(3)]
    linear, in_out = nn.Linear(n_in, n_out, bias=False), InOut(n_in, n_out)
    with torch.no_grad():  # the same weights: decoupled decay reads them
        in_out.weight.copy_(linear.weight.T)
    twin = _steps(name, nn.Sequential(linear), grads)
    stored = _steps(name, nn.Sequential(in_out), [g.T.contiguous() for g in grads])
    torch.testing.assert_close(stored.T, twin, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MATRIX)
def test_a_stacked_weight_steps_as_its_separate_matrices(name: str) -> None:
    """Each matrix of the stack is a layer of its group (as for group-relative rules such as
    noise-adaptive layerwise lrs): the stack steps as the same matrices as separate layers."""
    if orthoptim.registry.get(name).needs_module:
        pytest.skip("layer-hook optimizers capture nn.Linear / conv layers only")
    torch.manual_seed(0)
    grads = [torch.randn(3, 12, 8) for _ in range(3)]
    experts = Stacked(3, 8, 12)
    layers = nn.Sequential(*(nn.Linear(8, 12, bias=False) for _ in range(3)))
    with torch.no_grad():
        for e, layer in enumerate(layers):
            layer.weight.copy_(experts.weight[e])
    stacked = _steps(name, nn.Sequential(experts), grads)
    opt = orthoptim.build(name, layers, lr=0.01, overrides={"*weight*": "hidden"})
    for g in grads:
        for e, layer in enumerate(layers):
            layer.weight.grad = g[e].clone()
        opt.step()
    for e, layer in enumerate(layers):
        torch.testing.assert_close(experts.weight[e], layer.weight, rtol=1e-5, atol=1e-6)
    assert stacked.abs().sum() > 0


def test_layouts_by_module_type_declaration_and_override() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ConvTranspose2d(8, 3, 2), InOut(3, 5), Stacked(2, 5, 6)
    )
    assert orthoptim.routing.layouts(model) == {
        "0.weight": "out_in",
        "1.weight": "in_out",
        "2.weight": "in_out",
        "3.weight": "stacked_out_in",
    }
    fixed = orthoptim.routing.layouts(model, {"2.weight": "out_in"})
    assert fixed["2.weight"] == "out_in"
    with pytest.raises(ValueError, match="layout must be one of"):
        orthoptim.routing.layouts(model, {"2.weight": "transposed"})
    with pytest.raises(ValueError, match=r"matched no parameter: \['nope\*'\]"):
        orthoptim.routing.layouts(model, {"nope*": "in_out"})
    with pytest.raises(ValueError, match="needs a tensor with at least 3 dimensions"):
        orthoptim.routing.layouts(model, {"0.weight": "stacked_out_in"})


def test_a_traced_forward_finds_the_layout_of_a_bare_parameter() -> None:
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 6))  # used as x @ w: (in, out)
            self.experts = nn.Parameter(torch.randn(3, 5, 6))  # F.linear(x, experts[e])
            self.out = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x @ self.w
            h = sum(nn.functional.linear(h, self.experts[e]) for e in range(3))
            return self.out(h)

    model = Bare()
    traced = orthoptim.routing.layouts(model, example_input=torch.randn(2, 4))
    assert traced == {"w": "in_out", "experts": "stacked_out_in", "out.weight": "out_in"}
    opt = orthoptim.build("muon", model, example_input=torch.randn(2, 4))
    assert "4x6 (in_out)" in opt.describe()
    assert "3x5x6 (stacked_out_in)" in opt.describe()


def test_state_and_checkpoints_of_an_in_out_weight() -> None:
    """The matrix core's buffers are kept in (out, in) order; element-wise ones like the
    parameter; a checkpoint resumes bit-exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(InOut(8, 24), nn.Linear(24, 2))
    opt = orthoptim.build("normuon", model)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    state = opt.state[model[0].weight]
    assert state["momentum.m"].shape == (8, 24)
    assert state["normuon.v_row"].shape == (24, 1)  # one entry per output neuron
    copy = orthoptim.build("normuon", nn.Sequential(InOut(8, 24), nn.Linear(24, 2)))
    copy.load_state_dict(opt.state_dict())
    assert torch.equal(copy.state_dict()["state"][0]["normuon.v_row"], state["normuon.v_row"])


def test_matrices_are_views_in_out_in_order() -> None:
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert [tuple(m.shape) for m in matrices(x, "stacked_in_out")] == [(4, 3), (4, 3)]
    matrices(x, "in_out")[0].zero_()
    assert not x.any()
