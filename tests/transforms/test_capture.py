"""ActivationCapture: the statistics it records, when it records nothing, and its clean removal."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim.transforms.capture import ActivationCapture


def hooked(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_linear_statistics_are_mean_input_and_summed_output_grad() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    cap = ActivationCapture()
    cap.attach(layer)
    x = torch.randn(2, 4, 5, dtype=torch.float64)  # tokens count as rows, as in the reference
    out = layer(x)
    out.retain_grad()
    (out**2).sum().backward()
    a, g = cap.take(layer.weight)
    torch.testing.assert_close(a, x.reshape(-1, 5).mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(g, out.grad.reshape(-1, 3).sum(0), rtol=1e-12, atol=0)
    assert cap.take(layer.weight) is None  # taken once


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": 1},
        {"padding": 0, "stride": 2},
        {"padding": 2, "dilation": 2},
        {"padding": "same"},
        {"padding": (1, 0), "stride": (1, 2)},
    ],
)
def test_conv_statistics_match_the_reference_unfold_formula(kwargs) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, (3, 2), **kwargs).double()
    cap = ActivationCapture()
    cap.attach(conv)
    x = torch.randn(4, 2, 7, 6, dtype=torch.float64)
    out = conv(x)
    out.retain_grad()
    (out.sin()).sum().backward()
    a, g = cap.take(conv.weight)
    # The reference: unfold every sample, mean over positions, then over the batch; the output
    # gradient times the batch size, mean over positions, then over the batch.
    pad = conv._reversed_padding_repeated_twice
    patches = nn.functional.unfold(
        nn.functional.pad(x, pad), conv.kernel_size, conv.dilation, 0, conv.stride
    )
    assert a.shape == (conv.weight[0].numel(),)
    torch.testing.assert_close(a, patches.mean(2).mean(0), rtol=1e-12, atol=1e-15)
    n, positions = out.shape[0], out.shape[2] * out.shape[3]
    ref_g = (n * out.grad).reshape(n, 3, -1).sum(2).div(positions).mean(0)
    torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-15)


def test_no_grad_evaluation_and_forward_without_backward_record_nothing() -> None:
    layer = nn.Linear(4, 2)
    cap = ActivationCapture()
    cap.attach(layer)
    with torch.no_grad():
        layer(torch.randn(3, 4))
    layer(torch.randn(3, 4))  # graph built, never backpropagated
    assert cap.take(layer.weight) is None


def test_micro_batches_average_and_zero_grad_drops_stale_statistics() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 2, bias=False).double()
    cap = ActivationCapture()
    cap.attach(layer)
    xs = [torch.randn(3, 4, dtype=torch.float64) for _ in range(3)]
    layer(xs[0]).sum().backward()
    layer.weight.grad = None  # zero_grad(): the first backward's statistics are stale
    for x in xs[1:]:
        layer(x).sum().backward()  # accumulation: both count
    a, g = cap.take(layer.weight)
    torch.testing.assert_close(a, (xs[1].mean(0) + xs[2].mean(0)) / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(g, torch.full((2,), 3.0, dtype=torch.float64))


def test_remove_takes_every_hook_off() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    cap = ActivationCapture()
    cap.attach(model)
    assert hooked(model) == 2 and cap.attached
    with pytest.raises(RuntimeError, match="already attached"):
        cap.attach(model)
    cap.remove()
    assert hooked(model) == 0 and not cap.attached
    model(torch.randn(2, 1, 6, 6)).sum().backward()
    assert cap.take(model[2].weight) is None


def test_grouped_conv_is_not_captured() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Conv2d(4, 4, 1, padding_mode="zeros"))
    cap = ActivationCapture()
    cap.attach(model)
    assert not cap.tracks(model[0].weight) and cap.tracks(model[1].weight)


def test_optimizer_and_model_are_freed_without_cycles_and_hooks_go_with_the_optimizer() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = orthoptim.build("mkor", model)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert hooked(model) == 2
    gc.disable()  # freed by reference counting alone: nothing forms a cycle
    try:
        opt_ref = weakref.ref(opt)
        del opt
        assert opt_ref() is None
        assert hooked(model) == 0  # the capture died with its optimizer and took its hooks
        model_ref = weakref.ref(model)
        del model
        assert model_ref() is None
    finally:
        gc.enable()


def test_unused_capture_costs_nothing() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    orthoptim.build("adamw", model)
    assert hooked(model) == 0


def test_copies_of_a_capture_start_unattached() -> None:
    from orthoptim.recipes.mkor import mkor

    chain = mkor()
    model = nn.Linear(3, 2)
    chain.transforms[0].capture.attach(model)
    for copied in (copy.deepcopy(chain), pickle.loads(pickle.dumps(chain))):
        assert copied == chain and not copied.transforms[0].capture.attached
    assert chain.transforms[0].capture.attached and hooked(model) == 1
