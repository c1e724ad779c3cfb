"""Branches on tensor values rewritten as device-side selection equal the old Python branches.

Each old rule is written here as it was (a Python ``if`` on a tensor, one host read each) and
the transform, which now selects with ``torch.where``, must give the same values bit for bit on
inputs that take every side of every branch; each test also checks that every side was taken.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthoptim.functional.moments import stats_dtype
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.mkor import MKORHybridPrecondition, MKORPrecondition
from orthoptim.transforms.radial import ProjectRadial

# ------------------------------------------------------------------------------------------
# AdamP / SGDP: which view is projected, and the decay ratio


def old_radial(t: ProjectRadial, u: Tensor, s: dict[str, Tensor], c: Ctx) -> tuple[Tensor, str]:
    """The rule before: try the channel view, then the layer view, with ``if`` on the cosine;
    returns the update and the branch taken."""
    target = s["m"].mul_(t.buffer_momentum).add_(u) if t.buffer_momentum else u
    ratio, taken = 1.0, "vector" if u.ndim < 2 else "none"
    if u.ndim > 1:
        dtype = stats_dtype(target)
        theta, g = c.param.to(dtype), c.grad.to(dtype)
        for rows, view_name in ((theta.shape[0], "channel"), (1, "layer")):
            view = theta.reshape(rows, -1)
            cos = F.cosine_similarity(g.reshape(rows, -1), view, dim=1, eps=t.eps).abs_()
            if cos.max() < t.delta / math.sqrt(view.shape[1]):
                unit = view / view.norm(dim=1, keepdim=True).add_(t.eps)
                radial = (unit * target.to(dtype).reshape(rows, -1)).sum(dim=1, keepdim=True)
                target.sub_((unit * radial).reshape(target.shape).to(target.dtype))
                ratio, taken = t.wd_ratio, view_name
                break
    if target is not u:
        u.copy_(target)
    decay = c.weight_decay * t.decay_scale * ratio
    return (u.add_(c.param, alpha=decay) if decay != 0 else u), taken


def radial_case(shape: tuple[int, ...], kind: str, dtype: torch.dtype, seed: int) -> tuple:
    """``(theta, grad)`` whose gradient makes the rule take ``kind``'s branch: ``"channel"``
    (no row has a radial part), ``"layer"`` (two rows have opposite radial parts, which cancel
    over the layer only), ``"none"`` (a plain gradient)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind != "none" and len(shape) > 1:
        rows, pr = g.reshape(shape[0], -1), theta.reshape(shape[0], -1)
        rows = rows - pr * ((rows * pr).sum(1, keepdim=True) / (pr * pr).sum(1, keepdim=True))
        if kind == "layer":
            a = 10.0
            rows[0] += a * pr[0]
            rows[1] -= a * pr[1] * (pr[0] @ pr[0]) / (pr[1] @ pr[1])
        g = rows.reshape(shape)
    return theta.to(dtype), g.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("buffer_momentum", [0.0, 0.9])
@pytest.mark.parametrize("wd_ratio", [0.1, 0.0, 1.0])
def test_radial_projection_equals_the_branchy_rule(dtype, buffer_momentum, wd_ratio) -> None:
    t = ProjectRadial(wd_ratio=wd_ratio, decay_scale=1.5, buffer_momentum=buffer_momentum)
    taken = set()
    for shape in [(6, 5), (4, 3, 3, 3), (7,)]:
        for kind in ("channel", "layer", "none"):
            for seed in range(2):
                theta, g = radial_case(shape, kind, dtype, seed)
                state_new, state_old = t.init(theta), t.init(theta)
                for step in (1, 2):  # the second step reads a non-zero buffer
                    c = Ctx(step, 0.1, 2.0**-7, theta, g)
                    expected, branch = old_radial(t, g.clone(), state_old, c)
                    got = t.apply(g.clone(), state_new, c)
                    assert torch.equal(got, expected), (shape, kind, seed, branch)
                    for key in state_new:
                        assert torch.equal(state_new[key], state_old[key])
                    taken.add(branch)
    assert taken == {"channel", "layer", "none", "vector"}


# ------------------------------------------------------------------------------------------
# MKOR-H: before and after the switch


def old_hybrid_apply(t: MKORHybridPrecondition, u: Tensor, s: dict[str, Tensor], c: Ctx) -> Tensor:
    """The switch before: a host read of ``switched``, then MKOR or ``u`` as it is (the
    loss-decrease estimate in the transform's arithmetic, in place, so that the two agree bit
    for bit)."""
    param, grad = c.param.detach(), c.grad.detach()
    if c.step > 1:
        back = s["prev_param"].sub_(param)
        both = s["prev_grad"].add_(grad)
        total = torch.dot(both.reshape(-1), back.reshape(-1))
        decrease = torch.nan_to_num(0.5 * total.float(), 0.0)
        rate = s["rate"].mul_(t.switch_beta).add_(decrease * (1 - t.switch_beta))
        torch.maximum(s["peak"], rate, out=s["peak"])
        if c.step >= t.switch_warmup:
            s["switched"].copy_(s["switched"].logical_or(rate < t.switch_ratio * s["peak"]))
    s["prev_param"].copy_(param)
    s["prev_grad"].copy_(grad)
    if bool(s["switched"]):
        t.capture.take(c.parameter)
        return u
    return t.inner.apply(u, s, c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rule", ["paper", "package"])
def test_mkor_h_equals_the_branchy_switch_before_and_after_it(dtype, rule) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 4, bias=False).to(dtype)
    x, y = torch.randn(32, 5, dtype=dtype), torch.randn(32, 4, dtype=dtype)

    def hybrid() -> MKORHybridPrecondition:
        # stabilize_above just over 1/factor_beta: the stabiliser acts on both sides of the switch
        inner = MKORPrecondition(inverse_update=rule, stabilize_above=1.02)
        return MKORHybridPrecondition(inner=inner, switch_warmup=3, switch_ratio=0.9)

    new, old = hybrid(), hybrid()
    new.capture.attach(layer)
    old.capture.attach(layer)
    state_new, state_old = new.init(layer.weight), old.init(layer.weight)
    phases = []
    for step in range(1, 13):
        layer.zero_grad()
        (0.5 * (layer(x) - y).square().sum()).backward()  # progress slows: the switch comes
        grad = layer.weight.grad.clone()
        c = Ctx(step, 0.1, 0.0, layer.weight, grad)
        expected = old_hybrid_apply(old, grad.clone(), state_old, c)
        got = new.apply(grad.clone(), state_new, c)
        assert torch.equal(got, expected), step
        for key in state_new:
            assert torch.equal(state_new[key], state_old[key]), (step, key)
        phases.append(bool(state_new["switched"]))
        with torch.no_grad():
            layer.weight.sub_(0.01 * got)
    assert not phases[0] and phases[-1], phases  # both sides of the switch were taken
