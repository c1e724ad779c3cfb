"""torch's optimizer contract, checked on every registered optimizer.

PyTorch runs a common set of checks on each of its own optimizers (``test/test_optim.py`` over
the ``OptimizerInfo`` list of ``torch/testing/_internal/common_optimizers.py``, torch 2.13.0).
These are our own tests of the same published behaviour, driven by ``orthoptim.registry``:

- a ``state_dict`` round trip (saved, deep-copied, loaded into a second optimizer on a copy of
  the model) continues exactly as the original;
- equal parameters stepped equally give equal state dicts;
- a state dict whose per-parameter ``step`` is a Python number loads and steps (torch's
  ``Adam.__setstate__`` turns such a ``step`` into a tensor on load);
- ``copy.deepcopy`` and ``pickle`` give an optimizer that keeps every attribute and steps as the
  original (``Optimizer.__getstate__`` / ``__setstate__``; registered hooks are not copied);
- ``repr`` names the class, and ``zero_grad`` sets gradients to ``None`` by default
  (``set_to_none=True``) or to zeros.

New specs join automatically; exact MARS (``variant="exact"``, which needs ``step(closure)``)
runs as its own case.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

import orthoptim
from orthoptim import ChainOptimizer
from orthoptim.distributed import DistributedStep
from tests.helpers import closure_of, needs_closure, step_on

VOCAB, DIM, HIDDEN = 11, 8, 12

# (registry name, build options): every registered optimizer at its defaults, plus the variants
# that step differently (exact MARS evaluates the closure at the previous parameters too).
CASES = [pytest.param(name, {}, id=name) for name in orthoptim.registry.names()] + [
    pytest.param(name, {"variant": "exact"}, id=f"{name}-exact")
    for name in orthoptim.registry.names("mars_*")
    if "variant" in orthoptim.registry.get(name).options()
]


class Tiny(nn.Module):
    """Every role: an embedding, hidden matrices, a head, biases and a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.hidden = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, DIM))
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.embed(idx)
        return self.head(self.norm(x + self.hidden(x)))


def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def make(name: str, options: dict[str, Any], model: nn.Module) -> ChainOptimizer:
    return orthoptim.build(name, model, **options)


def batch_loss(model: nn.Module, seed: int) -> Callable[[], Tensor]:
    """The loss on batch ``seed``."""

    def compute() -> Tensor:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, VOCAB, (3, 5), generator=g)
        target = torch.randint(0, VOCAB, (3, 5), generator=g)
        return nn.functional.cross_entropy(model(idx).reshape(-1, VOCAB), target.reshape(-1))

    return compute


def batch_closure(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> Callable[[], Tensor]:
    """Zero the gradients, compute the loss on batch ``seed`` and backpropagate it."""

    def closure() -> Tensor:
        opt.zero_grad()
        loss = batch_loss(model, seed)()
        loss.backward()
        return loss

    return closure


def train(model: nn.Module, opt: ChainOptimizer, seeds: range) -> None:
    for s in seeds:
        step_on(opt, batch_loss(model, s))


def params_of(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def step_by_hand(opt: ChainOptimizer, seed: int) -> None:
    """Step on gradients set by hand: a fixed random tensor plus a term in the parameter (so
    the gradient at exact MARS's previous point differs from the current one), the gradient
    of ``<p, r> + 0.05 |p|^2`` (MKOR: no forward, so no captured statistics)."""
    g = torch.Generator().manual_seed(seed)
    params = params_of(opt)
    fixed = [torch.randn(p.shape, generator=g) for p in params]
    if needs_closure(opt):

        def compute() -> Tensor:
            terms = zip(params, fixed, strict=True)
            return sum(((p * r).sum() + 0.05 * p.square().sum() for p, r in terms), torch.zeros(()))

        opt.step(closure_of(opt, compute))
        return
    for p, r in zip(params, fixed, strict=True):
        p.grad = r + 0.1 * p.detach()
    opt.step()


def assert_same(a: Any, b: Any, where: str = "state_dict") -> None:
    """Equal nested state: tensors by ``torch.equal`` (and dtype), the rest by ``==``."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_params(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    pa, pb = params_of(a), params_of(b)
    assert len(pa) == len(pb)
    for i, (p, q) in enumerate(zip(pa, pb, strict=True)):
        assert p is not q
        assert torch.equal(p, q), f"parameter {i} differs"


def steps(opt: torch.optim.Optimizer) -> Iterator[Any]:
    return (s["step"] for s in opt.state.values() if "step" in s)


# ------------------------------------------------------------------------------------------
# state_dict


@pytest.mark.parametrize(("name", "options"), CASES)
def test_state_dict_round_trip_continues_exactly(name, options) -> None:
    model = tiny()
    opt = make(name, options, model)
    train(model, opt, range(3))
    saved = copy.deepcopy(opt.state_dict())
    other_model = copy.deepcopy(model)
    other = make(name, options, other_model)
    other.load_state_dict(saved)
    assert_same(other.state_dict(), opt.state_dict())
    train(model, opt, range(3, 6))
    train(other_model, other, range(3, 6))
    assert_same_params(opt, other)
    assert_same(other.state_dict(), opt.state_dict())


@pytest.mark.parametrize(("name", "options"), CASES)
def test_equal_params_stepped_equally_give_equal_state_dicts(name, options) -> None:
    a_model, b_model = tiny(), tiny()
    a, b = make(name, options, a_model), make(name, options, b_model)
    train(a_model, a, range(3))
    train(b_model, b, range(3))
    assert_same_params(a, b)
    assert_same(a.state_dict(), b.state_dict())


@pytest.mark.parametrize(("name", "options"), CASES)
def test_python_number_step_loads_and_steps_as_the_tensor_step(name, options) -> None:
    model = tiny()
    opt = make(name, options, model)
    train(model, opt, range(3))
    saved = copy.deepcopy(opt.state_dict())
    assert saved["state"], "nothing to check: no state was saved"
    as_numbers = copy.deepcopy(saved)
    for buffers in as_numbers["state"].values():
        buffers["step"] = float(buffers["step"])

    runs = []
    for state_dict in (saved, as_numbers):
        resumed_model = copy.deepcopy(model)
        resumed = make(name, options, resumed_model)
        resumed.load_state_dict(state_dict)
        for step in steps(resumed):
            assert isinstance(step, Tensor) and step.dtype == torch.float32 and step.ndim == 0
        train(resumed_model, resumed, range(3, 6))
        runs.append(resumed)
    assert_same_params(*runs)
    assert_same(runs[0].state_dict(), runs[1].state_dict())


def test_int_step_loads_too_and_torch_adamw_accepts_a_number_step() -> None:
    """torch's reference behaviour (AdamW) and ours, with an ``int`` step this time."""
    p = nn.Parameter(torch.ones(2, 2))
    torch_adamw = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    torch_adamw.step()
    state_dict = torch_adamw.state_dict()
    state_dict["state"][0]["step"] = 1
    torch_adamw.load_state_dict(state_dict)
    torch_adamw.step()
    assert torch.equal(torch_adamw.state[p]["step"], torch.tensor(2.0))

    model = tiny()
    opt = orthoptim.build("adamw", model)
    train(model, opt, range(1))
    state_dict = opt.state_dict()
    for buffers in state_dict["state"].values():
        buffers["step"] = 1
    opt.load_state_dict(state_dict)
    train(model, opt, range(1, 2))
    assert all(torch.equal(s, torch.tensor(2.0)) for s in steps(opt))


# ------------------------------------------------------------------------------------------
# copy.deepcopy and pickle

COPIERS = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda opt: pickle.loads(pickle.dumps(opt)),
}


@pytest.mark.parametrize("copier", list(COPIERS))
@pytest.mark.parametrize(("name", "options"), CASES)
def test_copy_keeps_every_attribute_and_steps_as_the_original(name, options, copier) -> None:
    model = tiny()
    opt = make(name, options, model)
    train(model, opt, range(2))
    public = [a for a in dir(opt) if not a.startswith("_")]

    twin = COPIERS[copier](opt)

    assert type(twin) is type(opt)
    assert vars(twin).keys() == vars(opt).keys()
    assert all(hasattr(twin, a) for a in public)
    assert twin.defaults == opt.defaults
    for attr in ("nonfinite", "fast_paths", "skipped_steps", "distributed"):
        assert getattr(twin, attr) == getattr(opt, attr), attr
    assert repr(twin.plan) == repr(opt.plan)
    assert twin.describe() == opt.describe()
    assert repr(twin) == repr(opt)
    assert_same(twin.state_dict(), opt.state_dict())
    assert_same_params(opt, twin)  # deep copies: equal values, other tensors
    assert set(map(id, twin.state)) == set(map(id, params_of(twin)))

    # Equal gradients by hand (MKOR: no forward, so neither has captured statistics).
    for seed in range(2, 5):
        step_by_hand(opt, seed)
        step_by_hand(twin, seed)
    assert_same_params(opt, twin)
    assert_same(twin.state_dict(), opt.state_dict())


@pytest.mark.parametrize("copier", list(COPIERS))
def test_copy_drops_registered_hooks_as_torch_does(copier) -> None:
    """torch's ``__getstate__`` leaves the hook dicts out and ``__setstate__`` re-creates them
    empty: hooks belong to the original (checked on torch's SGD too)."""
    calls: list[str] = []
    model = tiny()
    for opt in (torch.optim.SGD(model.parameters(), lr=0.1), orthoptim.build("muon", model)):
        opt.register_step_post_hook(lambda *_: calls.append("post"))
        opt.register_state_dict_pre_hook(lambda *_: calls.append("sd"))
        # (a lambda cannot be pickled: this works because the hooks are left out)
        twin = COPIERS[copier](opt)
        for key, hooks in vars(twin).items():
            if key.startswith("_optimizer_") and key.endswith("_hooks"):
                assert hooks == {}, key
        twin.state_dict()
        assert calls == []
        opt.state_dict()
        assert calls == ["sd"]
        calls.clear()


@pytest.fixture
def one_rank_group() -> Iterator[Any]:
    """A one-process gloo group, destroyed after the test."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("copier", list(COPIERS))
def test_copy_of_a_distributed_optimizer_raises(one_rank_group, copier) -> None:
    """A ``DistributedStep`` holds a process group (which torch cannot pickle) and owners keyed
    by this process's parameters: copying must fail loudly, not give a broken optimizer."""
    opt = orthoptim.build("muon", tiny())
    opt.distributed = DistributedStep("replicated", one_rank_group, opt.plan, opt.param_groups)
    with pytest.raises(TypeError, match="distributed ChainOptimizer cannot be deep-copied"):
        COPIERS[copier](opt)


# ------------------------------------------------------------------------------------------
# repr and zero_grad


@pytest.mark.parametrize(("name", "options"), CASES)
def test_repr_names_the_class(name, options) -> None:
    opt = make(name, options, tiny())
    text = repr(opt)
    assert text.startswith("ChainOptimizer (")
    assert all(f"Parameter Group {i}" in text for i in range(len(opt.param_groups)))


@pytest.mark.parametrize(("name", "options"), CASES)
def test_zero_grad_sets_none_by_default_and_zeros_on_request(name, options) -> None:
    model = tiny()
    opt = make(name, options, model)
    batch_closure(model, opt, 0)()
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())
    opt.zero_grad(set_to_none=False)
    for p in model.parameters():
        assert p.grad is not None and not p.grad.any()
    batch_closure(model, opt, 1)()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
