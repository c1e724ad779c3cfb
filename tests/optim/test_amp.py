"""``torch.amp.GradScaler`` and the unchecked mode (``nonfinite="off"``), on every registered
optimizer: the scaler checks and the optimizer unscales, each once; a step the scaler finds
non-finite leaves parameters and state bit for bit; ``"off"`` is torch.optim's behaviour."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import orthoptim
from orthoptim.bench.speed import ops
from orthoptim.registry import REGISTRY
from tests.helpers import mlp

# torch's GradScaler.step takes no closure (it raises for one): optimizers that step only with
# a closure (gradient estimators, exact MARS, Hessian-vector products) cannot be scaled.
NAMES = [spec.name for spec in REGISTRY if not spec.needs_closure]
SCALE = 2.0**10  # a power of two: unscaling by x * (1/s) or x / s is then exact either way


class CountOps(TorchDispatchMode):
    """Counts the aten ops run inside it, by overload packet name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def scaled_backward(model: nn.Module, scaler: torch.amp.GradScaler, seed: int, dtype) -> None:
    x, y = batch(seed)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    scaler.scale(nn.functional.cross_entropy(out.float(), y)).backward()


def make(name: str, model: nn.Module, supports_amp: bool) -> torch.optim.Optimizer:
    opt = orthoptim.build(name, model)
    if not supports_amp:  # the scaler's generic path: it unscales, checks, then calls step()
        opt._step_supports_amp_scaling = False  # type: ignore[attr-defined]
    return opt


def train_scaled(name: str, supports_amp: bool, dtype, steps: int = 4, unscale_first=False):
    model = mlp()
    opt = make(name, model, supports_amp)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    for s in range(steps):
        opt.zero_grad()
        scaled_backward(model, scaler, s, dtype)
        if unscale_first:  # as users do to clip gradients
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
    grads = [p.grad.clone() for p in model.parameters()]
    return model, opt, grads


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_scaler_step_equals_the_scalers_generic_path(name, dtype) -> None:
    ours, ours_opt, ours_grads = train_scaled(name, True, dtype)
    generic, generic_opt, generic_grads = train_scaled(name, False, dtype)
    for a, b in zip(ours.parameters(), generic.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(ours_grads, generic_grads, strict=True):  # unscaled once, in place
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ours_opt.skipped_steps == generic_opt.skipped_steps == 0


@pytest.mark.parametrize("name", ["adamw", "muon", "soap"])
def test_scaler_step_after_unscale_does_not_unscale_again(name) -> None:
    ours, _, _ = train_scaled(name, True, torch.float16, unscale_first=True)
    generic, _, _ = train_scaled(name, False, torch.float16, unscale_first=True)
    for a, b in zip(ours.parameters(), generic.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_a_step_the_scaler_finds_non_finite_changes_nothing(name) -> None:
    model = mlp()
    opt = orthoptim.build(name, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    for s in range(2):  # state exists before the bad step
        opt.zero_grad()
        scaled_backward(model, scaler, s, torch.float16)
        scaler.step(opt)
        scaler.update()
    before = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {k: v.clone() for k, v in st.items()} for p, st in opt.state.items()}
    opt.zero_grad()
    scaled_backward(model, scaler, 2, torch.float16)
    next(model.parameters()).grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == SCALE / 2  # the scaler saw the inf and backed off
    assert opt.skipped_steps == 1
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    for p, st in opt.state.items():
        for key, value in st.items():
            assert torch.equal(value, state[id(p)][key]), (name, key)


@pytest.mark.parametrize("name", ["adamw", "muon", "normuon", "shampoo"])
def test_the_scaler_checks_and_the_optimizer_does_not(name) -> None:
    model = mlp()
    opt = orthoptim.build(name, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    scaled_backward(model, scaler, 0, torch.float16)
    with CountOps() as counted:
        scaler.step(opt)
    for check in ("aminmax", "dot", "_foreach_norm"):  # our check is replaced by the scaler's
        assert counted.ops[check] == 0
    assert counted.ops["_amp_foreach_non_finite_check_and_unscale_"] >= 1
    # Unscaled once: by the fused AdamW kernel on the adamw route, one multi-tensor multiply
    # elsewhere (the scaler's own check multiplies by 1).
    assert counted.ops["_foreach_mul_"] <= 1


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_off_is_torch_behaviour_a_nan_reaches_the_parameters(name) -> None:
    model = mlp()
    opt = orthoptim.build(name, model, nonfinite="off")
    first = next(model.parameters())
    first.grad = torch.zeros_like(first)
    first.grad[0, 0] = float("nan")
    for p in list(model.parameters())[1:]:
        p.grad = torch.ones_like(p)
    reads = ops.count([opt], opt.step, prepare=lambda: None, steps=1)
    assert reads.host_reads == 0  # no check at all (reads of host step counters aside)
    for check in ("aminmax", "dot", "_foreach_norm"):
        assert not reads.by_op.get(f"aten.{check}")
    assert torch.isnan(first).any()
    assert opt.skipped_steps == 0


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_off_equals_the_checked_step_on_finite_gradients(name) -> None:
    results = []
    for policy in ("raise", "off"):
        model = mlp()
        opt = orthoptim.build(name, model, nonfinite=policy)
        for s in range(3):
            opt.zero_grad()
            x, y = batch(s)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [False, True])
def test_a_fused_only_plan_reads_nothing_from_the_device_under_the_scaler(bad) -> None:
    # adamw runs torch's fused kernel on every parameter: found_inf goes into the kernel, which
    # skips on the device, and the skip is counted there until skipped_steps is read
    model = mlp()
    opt = orthoptim.build("adamw", model)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    scaled_backward(model, scaler, 0, torch.float16)
    scaler.step(opt)
    scaler.update()
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaled_backward(model, scaler, 1, torch.float16)
    if bad:
        next(model.parameters()).grad[0, 0] = float("inf")
    # scaler.step itself reads nothing for an optimizer that supports amp scaling
    step = lambda: scaler.step(opt)  # noqa: E731
    assert ops.count([opt], step, prepare=lambda: None, steps=1).host_reads == 0
    changed = [not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)]
    assert not any(changed) if bad else all(changed)
    assert opt.skipped_steps == int(bad)
    assert all(opt.state[p]["step"].item() == (1 if bad else 2) for p in model.parameters())


def test_a_plan_with_an_eager_route_reads_the_scalers_finding_once() -> None:
    model = mlp()
    opt = orthoptim.build("muon", model)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    scaled_backward(model, scaler, 0, torch.float16)
    step = lambda: scaler.step(opt)  # noqa: E731
    assert ops.count([opt], step, prepare=lambda: None, steps=1).host_reads == 1
