"""``orthoptim.estimate``: state bytes from the transforms' declarations equal what one real step
allocates, for every registered optimizer; the per-rank split partitions the total."""

from __future__ import annotations

import pytest
import torch

import orthoptim
from orthoptim.bench.models import TinyGPT
from orthoptim.estimate import STEP_COUNTER_BYTES
from tests.helpers import step_on


def tiny_gpt() -> TinyGPT:
    return TinyGPT(vocab=32, dim=16, depth=1, heads=2, context=8)


def measured_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def one_step(name: str, model: TinyGPT) -> torch.optim.Optimizer:
    opt = orthoptim.build(name, model)
    x = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(0))
    step_on(opt, lambda: model(x).square().mean())
    return opt


@pytest.mark.parametrize("name", orthoptim.names())
def test_estimate_equals_the_state_of_one_real_step(name: str) -> None:
    torch.manual_seed(0)
    model = tiny_gpt()
    with torch.device("meta"):
        meta_model = tiny_gpt()
    est = orthoptim.estimate(name, meta_model)
    assert est.state_bytes == orthoptim.estimate(name, model).state_bytes
    measured = measured_state_bytes(one_step(name, model))
    if est.initial_state_bytes == est.state_bytes:
        assert measured == est.state_bytes
    else:
        # buffers released while unused (FRUGAL's state-free blocks): the first step allocates
        # those of its state-full blocks only, between the two figures
        assert est.initial_state_bytes < measured < est.state_bytes
    assert est.flops > 0
    assert sum(r.parameters for r in est.routes) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["muon", "adamw", "shampoo", "psgd_kron", "frugal"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_per_rank_split_partitions_the_total(name: str, world: int) -> None:
    with torch.device("meta"):
        model = tiny_gpt()
    est = orthoptim.estimate(name, model, world_size=world)
    for route in est.routes:
        assert len(route.owned_state_bytes) == world
        assert route.replicated_state_bytes + sum(route.owned_state_bytes) == route.state_bytes
        assert route.replicated_flops + sum(route.owned_flops) == pytest.approx(route.flops)
        assert route.replicated_state_bytes >= route.parameters * STEP_COUNTER_BYTES
    if world == 1:
        assert est.rank_state_bytes(0) == est.state_bytes
        assert est.rank_flops(0) == pytest.approx(est.flops)
    matrix = est.routes[0]
    if name != "adamw" and world > 1:  # the matrix steps are shared out, each to one owner
        assert all(b > 0 for b in matrix.owned_state_bytes)
        assert max(est.rank_state_bytes(k) for k in range(world)) < est.state_bytes


def test_estimate_leaves_an_activation_reading_model_without_hooks() -> None:
    model = tiny_gpt()
    orthoptim.estimate("mkor", model)
    assert not any(m._forward_hooks for m in model.modules())


def test_single_process_optimizers_refuse_several_ranks() -> None:
    with torch.device("meta"):
        model = tiny_gpt()
    with pytest.raises(ValueError, match="cannot run on 2 ranks"):
        orthoptim.estimate("mkor", model, world_size=2)
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="world_size"):
        orthoptim.estimate("muon", model, world_size=0)


def test_options_reach_the_recipe() -> None:
    with torch.device("meta"):
        model = tiny_gpt()
    plain = orthoptim.estimate("muon", model)
    wide = orthoptim.estimate("muon", model, options={"momentum_dtype": "float32"})
    assert wide.state_bytes == plain.state_bytes  # float32 parameters: the same bytes
    soap = orthoptim.estimate("soap", model, options={"max_precond_dim": 8})
    assert soap.state_bytes < orthoptim.estimate("soap", model).state_bytes
