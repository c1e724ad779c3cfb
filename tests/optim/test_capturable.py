"""``capturable=True``: step counters and a tensor lr stay on the device, the transforms read the
counter as a tensor, and ``torch.compile(opt.step, fullgraph=True)`` traces the whole step once
for every lr a scheduler sets (issue 17, item 4)."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch._dynamo

import orthoptim
from orthoptim.bench.models import TinyGPT
from orthoptim.bench.speed import ops

STEPS = 5
# opt.step is taken before the scheduler wraps it (torch.compile does not trace that wrapper),
# so the scheduler does not see the optimizer's steps and warns that it ran first
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")


def model() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(vocab=32, dim=16, depth=1, heads=2, context=8)


def fixed_grads(m: torch.nn.Module) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, generator=gen) for p in m.parameters()] for _ in range(STEPS)]


def train(name: str, m: torch.nn.Module, capturable: bool, compiled: bool = False, **options):
    """``STEPS`` steps on fixed gradients, a ``LambdaLR`` moving the lr after each one; a
    capturable optimizer gets its lr as a tensor (so the scheduler writes into it)."""
    lr = orthoptim.registry.get(name).lr
    opt = orthoptim.build(
        name,
        m,
        lr=torch.tensor(lr) if capturable else lr,
        nonfinite="off",
        capturable=capturable,
        **options,
    )
    # compiled before the scheduler wraps opt.step (torch.compile does not trace that wrapper)
    step = torch.compile(opt.step, fullgraph=True) if compiled else opt.step
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for grads in fixed_grads(m):
        for p, g in zip(m.parameters(), grads, strict=True):
            p.grad = g.clone()
        step()
        scheduler.step()
    return opt


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        (x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters(), strict=True)
    )


@pytest.mark.parametrize("name", ["adamw", "muon", "sgd", "adamp", "sgdp"])
def test_capturable_equals_the_default_step(name: str) -> None:
    # The bias corrections are computed from the float32 counter on the device instead of in
    # Python floats, and lr times the update by one addcmul: float32 round-off apart.
    default, capturable = model(), model()
    train(name, default, capturable=False)
    opt = train(name, capturable, capturable=True)
    assert max_difference(default, capturable) <= 1e-6
    for p in capturable.parameters():
        assert opt.state[p]["step"].device == p.device and int(opt.state[p]["step"]) == STEPS


@pytest.mark.parametrize("name", ["adamw", "muon", "adamp", "sgdp"])
def test_a_capturable_step_reads_nothing_on_the_host(name: str) -> None:
    m = model()
    opt = train(name, m, capturable=True)
    counted = ops.count([opt], opt.step, prepare=lambda: None, steps=1)
    assert counted.host_reads == 0 and counted.step_reads == 0


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU backend (inductor) builds C++: no compiler on this machine",
)
@pytest.mark.parametrize(
    ("name", "tolerance"),
    # adamw: float32 round-off. muon: Newton-Schulz runs in bfloat16, and inductor's fused
    # kernels round its products differently: about one bf16 ulp (2^-8) of the orthogonalized
    # update per step, lr * 2^-8 * STEPS = 4e-4 at lr 0.02 (measured 5.1e-4, all in the
    # hidden matrices).
    [("adamw", 2e-6), ("muon", 1e-3)],
)
def test_the_compiled_capturable_step_traces_once_and_equals_the_eager_one(
    name: str, tolerance: float
) -> None:
    eager, compiled = model(), model()
    train(name, eager, capturable=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train(name, compiled, capturable=True, compiled=True)
    # one graph for the first step (it creates the state), one for every later step, whatever
    # lr the scheduler sets: nothing is frozen into the graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    assert max_difference(eager, compiled) <= tolerance


def test_capturable_needs_capturable_transforms_and_one_process() -> None:
    with pytest.raises(ValueError, match="AdamInEigenbasis"):
        orthoptim.build("soap", model(), capturable=True)
    with pytest.raises(ValueError, match="capturable"):
        orthoptim.build("adamw", model(), capturable="yes")  # type: ignore[arg-type]


def test_checkpoints_move_between_capturable_and_default_steps() -> None:
    # the step counter goes where the loading optimizer keeps it
    first, second = model(), model()
    opt = train("adamw", first, capturable=True)
    other = orthoptim.build("adamw", second, capturable=False, fast_paths=False)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p in second.parameters():
        p.grad = torch.ones_like(p)
    other.step()
    assert all(int(other.state[p]["step"]) == STEPS + 1 for p in second.parameters())
