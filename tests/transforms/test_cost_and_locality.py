"""``cost`` and ``elementwise``: what the distributed layer and the speed benchmark rely on.

Every transform that claims ``elementwise`` must give, on row shards of a parameter (with the
matching shards of its state), exactly the rows it gives on the whole parameter: that is what
lets a sharded (FSDP2) step run it locally. Every transform class in ``orthoptim.transforms`` is
discovered, so a new one is covered when it lands.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import orthoptim.transforms as transforms_pkg
from orthoptim.recipes import muon
from orthoptim.transforms import Orthogonalize, TransformBase
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.chain import Chain


def transform_classes() -> list[type[TransformBase]]:
    for module in pkgutil.iter_modules(transforms_pkg.__path__):
        importlib.import_module(f"{transforms_pkg.__name__}.{module.name}")
    found: list[type[TransformBase]] = []
    stack = list(TransformBase.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        # dataclass(slots=True) replaces each class by a new one; keep the module's own.
        module = sys.modules.get(cls.__module__)
        if cls is not Chain and getattr(module, cls.__name__, None) is cls and cls not in found:
            found.append(cls)
    return sorted(found, key=lambda c: c.__qualname__)


ELEMENTWISE = [c for c in transform_classes() if c.elementwise]


def test_the_known_elementwise_transforms_say_so() -> None:
    names = {c.__name__ for c in ELEMENTWISE}
    assert {"Momentum", "ScaleByAdam", "AddWeightDecay"} <= names
    assert not Orthogonalize.elementwise
    assert not muon().is_elementwise


@pytest.mark.parametrize("cls", ELEMENTWISE, ids=lambda c: c.__name__)
def test_an_elementwise_transform_gives_the_same_rows_on_shards(cls) -> None:
    try:
        t = cls()
    except TypeError:
        pytest.skip(f"{cls.__name__} has required fields; no default instance to check")
    torch.manual_seed(0)
    p = torch.randn(10, 6, dtype=torch.float64)
    whole = t.init(p)
    cut = 4
    shards = [
        ({k: v[:cut].clone() for k, v in whole.items()}, slice(0, cut)),
        ({k: v[cut:].clone() for k, v in whole.items()}, slice(cut, None)),
    ]
    for step in range(1, 4):
        g = torch.randn_like(p)
        expected = t.apply(g.clone(), whole, Ctx(step, 0.1, 0.01, p, g))
        for state, rows in shards:
            got = t.apply(g[rows].clone(), state, Ctx(step, 0.1, 0.01, p[rows], g[rows]))
            torch.testing.assert_close(got, expected[rows], rtol=0, atol=0)
            for key, buffer in state.items():
                torch.testing.assert_close(buffer, whole[key][rows], rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (24, 24), (8, 4, 3, 3)])
def test_orthogonalize_cost_is_the_flops_it_runs(shape) -> None:
    t = Orthogonalize(compute_dtype="float32")
    u = torch.randn(shape)
    with FlopCounterMode(display=False) as counter:
        t.apply(u, {}, Ctx(1, 0.1, 0.0, u, u))
    assert t.cost(shape) == counter.get_total_flops()


def test_a_chain_costs_the_sum_of_its_transforms() -> None:
    chain = muon()
    assert chain.cost((64, 32)) == sum(t.cost((64, 32)) for t in chain.transforms)
    assert chain.cost((64, 32)) > Orthogonalize().cost((64, 32)) > 0
