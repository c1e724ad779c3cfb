"""ActivationCapture across layer types: transformers Conv1D, Conv1d/3d against a brute force,
and the reasons it gives for the weights it cannot serve."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

import orthoptim
from orthoptim.transforms.capture import (
    ActivationCapture,
    uncapturable_params,
    uncapturable_reason,
)

transformers_utils = pytest.importorskip("transformers.pytorch_utils")
Conv1D = transformers_utils.Conv1D


def run_capture(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(a, g, output gradient)`` of one forward/backward of ``layer`` on ``x``."""
    cap = ActivationCapture()
    cap.attach(layer)
    out = layer(x)
    out.retain_grad()
    out.sin().sum().backward()
    stats = cap.take(layer.weight)
    assert stats is not None, "nothing was captured"
    return stats[0], stats[1], out.grad


@pytest.mark.parametrize("subclass", [False, True])
def test_hf_conv1d_statistics_equal_the_linear_ones(subclass: bool) -> None:
    torch.manual_seed(0)
    cls = type("MyConv1D", (Conv1D,), {}) if subclass else Conv1D
    conv = cls(nf=3, nx=5).double()  # weight (in=5, out=3), y = x @ W + b
    linear = nn.Linear(5, 3).double()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    a_conv, g_conv, _ = run_capture(conv, x)
    a_lin, g_lin, out_grad = run_capture(linear, x)
    assert a_conv.shape == (5,) and g_conv.shape == (3,)
    torch.testing.assert_close(a_conv, a_lin, rtol=0, atol=0)
    torch.testing.assert_close(g_conv, g_lin, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(a_conv, x.reshape(-1, 5).mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(g_conv, out_grad.reshape(-1, 3).sum(0), rtol=1e-12, atol=0)


def explicit_padding(kernel: tuple[int, ...], dilation: tuple[int, ...], padding) -> list[int]:
    """``(left, right)`` per spatial dim, first dim first, worked out from the conv's arguments."""
    nd = len(kernel)
    if padding == "same":  # the extra element of an odd total goes to the right
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return [p for t in totals for p in (t // 2, t - t // 2)]
    pads = (padding,) * nd if isinstance(padding, int) else padding
    return [p for q in pads for p in (q, q)]


def brute_force(conv: nn.Module, x: Tensor, out_grad: Tensor, padding) -> tuple[Tensor, Tensor]:
    """Every sample's every patch, in the weight's column order, averaged; the output gradient
    summed over samples and averaged over positions. Loops, no unfold."""
    kernel, dilation, stride = conv.kernel_size, conv.dilation, conv.stride
    nd = len(kernel)
    if x.dim() == nd + 1:
        x, out_grad = x.unsqueeze(0), out_grad.unsqueeze(0)
    pads = explicit_padding(kernel, dilation, padding)
    shape = [x.shape[2 + d] + pads[2 * d] + pads[2 * d + 1] for d in range(nd)]
    xpad = x.new_zeros(x.shape[0], x.shape[1], *shape)
    inside = tuple(slice(pads[2 * d], pads[2 * d] + x.shape[2 + d]) for d in range(nd))
    xpad[(slice(None), slice(None), *inside)] = x
    positions = [
        range((shape[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1) for d in range(nd)
    ]
    patches = []
    for n in range(x.shape[0]):
        for pos in itertools.product(*positions):
            window = tuple(
                slice(p * s, p * s + d * (k - 1) + 1, d)
                for p, s, d, k in zip(pos, stride, dilation, kernel, strict=True)
            )
            patch = xpad[(n, slice(None), *window)]
            assert patch.shape == conv.weight.shape[1:]
            patches.append(patch.reshape(-1))
    a = torch.stack(patches).mean(0)
    g = out_grad.flatten(2).mean(2).sum(0)
    return a, g


CONV1D_CASES = [
    {"padding": 0},
    {"padding": 2},
    {"padding": 1, "stride": 2},
    {"padding": 3, "dilation": 3},
    {"padding": "same", "dilation": 2},
    {"padding": "same"},  # kernel 4: asymmetric padding
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kwargs", CONV1D_CASES)
@pytest.mark.parametrize("batched", [True, False])
def test_conv1d_statistics_match_the_brute_force(kwargs: dict, batched: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv1d(3, 2, 4, **kwargs).double()
    x = torch.randn(*((5,) if batched else ()), 3, 11, dtype=torch.float64)
    a, g, out_grad = run_capture(conv, x)
    ref_a, ref_g = brute_force(conv, x, out_grad, kwargs["padding"])
    assert a.shape == (conv.weight[0].numel(),)
    torch.testing.assert_close(a, ref_a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-14)


CONV3D_CASES = [
    {"padding": 1},
    {"padding": 0, "stride": (2, 1, 2)},
    {"padding": (2, 0, 1), "dilation": (2, 1, 1)},
    {"padding": "same"},
    {"padding": (1, 1, 0), "stride": 2, "dilation": (1, 2, 1)},
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kwargs", CONV3D_CASES)
@pytest.mark.parametrize("batched", [True, False])
def test_conv3d_statistics_match_the_brute_force(kwargs: dict, batched: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, (3, 2, 2), **kwargs).double()
    x = torch.randn(*((3,) if batched else ()), 2, 6, 5, 7, dtype=torch.float64)
    a, g, out_grad = run_capture(conv, x)
    ref_a, ref_g = brute_force(conv, x, out_grad, kwargs["padding"])
    assert a.shape == (conv.weight[0].numel(),)
    torch.testing.assert_close(a, ref_a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-14)


class Zoo(nn.Module):
    """One of each layer the capture serves and of each it cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.gpt = Conv1D(4, 4)
        self.conv1 = nn.Conv1d(2, 2, 3)
        self.conv3 = nn.Conv3d(2, 2, 1)
        self.attn = nn.MultiheadAttention(4, 2)
        self.lstm = nn.LSTM(4, 3)
        self.grouped = nn.Conv2d(4, 8, 3, groups=4)
        self.circular = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")
        self.transposed = nn.ConvTranspose2d(2, 3, 3)
        self.bilinear = nn.Bilinear(2, 3, 4)
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: the embedding's use is invisible


def test_uncapturable_params_names_every_unserved_matrix_with_its_reason() -> None:
    model = Zoo()
    reasons = uncapturable_params(model)
    assert set(reasons) == {
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "grouped.weight",
        "circular.weight",
        "transposed.weight",
        "bilinear.weight",
        "embed.weight",
    }
    assert "F.multi_head_attention_forward" in reasons["attn.in_proj_weight"]
    assert "out_proj" in reasons["attn.out_proj.weight"]
    assert "fused recurrent kernel" in reasons["lstm.weight_hh_l0"]
    assert reasons["grouped.weight"].startswith("groups=4:")
    assert "circular" in reasons["circular.weight"]
    assert "ConvTranspose2d" in reasons["transposed.weight"]
    assert "Bilinear" in reasons["bilinear.weight"]
    assert "shared" in reasons["embed.weight"] and "Embedding" in reasons["embed.weight"]
    # The capture hooks exactly the other matrices: the two can never disagree.
    cap = ActivationCapture()
    cap.attach(model)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            assert cap.tracks(p) == (name not in reasons), name


def test_uncapturable_reason_per_module_and_parameter() -> None:
    attn = nn.MultiheadAttention(4, 2)
    assert uncapturable_reason(attn, "in_proj_weight") == (
        "MultiheadAttention computes its projections inside F.multi_head_attention_forward, "
        "where module hooks cannot see their inputs and output gradients"
    )
    assert uncapturable_reason(attn.out_proj, "weight") is None  # on its own, a Linear
    assert uncapturable_reason(attn.out_proj, "weight", parent=attn) is not None
    assert uncapturable_reason(nn.GRU(3, 3), "weight_ih_l0") is not None
    assert uncapturable_reason(nn.Linear(3, 3), "weight") is None
    assert uncapturable_reason(Conv1D(3, 2), "weight") is None
    assert uncapturable_reason(nn.Conv3d(2, 2, 3, padding="same"), "weight") is None
    assert "not the layer's weight" in uncapturable_reason(nn.Linear(3, 3), "bias")
    assert uncapturable_reason(nn.Embedding(3, 2), "weight") == (
        "Embedding is not a layer type MKOR captures (Linear, Conv1d/2d/3d, transformers Conv1D)"
    )


class GPTish(nn.Module):
    """A Conv1d over a sequence, then a GPT-2 style Conv1D over its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 5, 3, padding=1)
        self.proj = Conv1D(nf=4, nx=5)  # weight (5, 4): in != out, so orientation matters

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.conv(x).transpose(1, 2).contiguous())


def test_mkor_factors_of_conv1d_and_hf_conv1d_leave_the_identity() -> None:
    torch.manual_seed(0)
    model = GPTish()
    # proj ends the network (routed as its head); precondition it here to test its capture
    opt = orthoptim.build("mkor", model, overrides={"proj.weight": "hidden"})
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3, 6)).square().mean().backward()
        opt.step()
    # (out, in) factors for both; the Conv1D's needs its weight presented as (out, in) = (4, 5)
    shapes = {model.conv.weight: (5, 9), model.proj.weight: (4, 5)}
    for weight, (rows, cols) in shapes.items():
        state = opt.state[weight]
        assert state["mkor.L_inv"].shape == (rows, rows)
        assert state["mkor.R_inv"].shape == (cols, cols)
        for key in ("mkor.L_inv", "mkor.R_inv"):
            factor = state[key]
            eye = torch.eye(factor.shape[0], dtype=factor.dtype)
            assert not torch.allclose(factor, eye), key
