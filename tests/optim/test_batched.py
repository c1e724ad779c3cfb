"""Newton-Schulz batched by shape (``Orthogonalize(batch_by_shape=True)``) equals the eager
one-matrix-at-a-time path it replaces, and is invisible to checkpoints."""

from __future__ import annotations

import pytest
import torch

import orthoptim
from tests.helpers import save_and_load

# Same-shape groups (of two and three), a lone shape, conv kernels, wide and tall matrices.
SHAPES = [(24, 16), (24, 16), (16, 40), (16, 40), (16, 40), (8, 4, 3, 3), (8, 4, 3, 3), (32, 32)]


def run(name: str, batched: bool, dtype: torch.dtype, compute: str, steps: int = 4):
    torch.manual_seed(0)
    params = [torch.randn(s, dtype=dtype).requires_grad_() for s in SHAPES]
    opt = orthoptim.build(name, params, compute_dtype=compute, batch_by_shape=batched)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("name", ["muon", "normuon", "muon_polar"])
@pytest.mark.parametrize(
    ("dtype", "compute"),
    [(torch.float32, "bfloat16"), (torch.float32, "float32"), (torch.bfloat16, "bfloat16")],
)
def test_batched_equals_one_at_a_time(name, dtype, compute) -> None:
    eager, eager_opt = run(name, False, dtype, compute)
    batched, batched_opt = run(name, True, dtype, compute)
    assert batched_opt.plan.routes[0].chain.groupwise
    assert not eager_opt.plan.routes[0].chain.groupwise
    for a, b in zip(eager, batched, strict=True):
        # bmm and mm of these sizes round alike on CPU (measured: bitwise); 1e-6 leaves room
        # for kernels that do not
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_batching_is_not_part_of_the_chain_a_checkpoint_names() -> None:
    eager, eager_opt = run("muon", False, torch.float32, "bfloat16")
    batched, batched_opt = run("muon", True, torch.float32, "bfloat16")
    assert repr(eager_opt.plan) == repr(batched_opt.plan)
    saved = save_and_load(torch.nn.ParameterList(batched), batched_opt)["opt"]
    eager_opt.load_state_dict(saved)  # the same optimizer: loads
    for key in ("momentum.m",):
        for p, q in zip(eager, batched, strict=True):
            assert torch.equal(eager_opt.state[p][key], batched_opt.state[q][key])


def test_batch_by_shape_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="batch_by_shape"):
        orthoptim.build("muon", [torch.randn(4, 4, requires_grad=True)], batch_by_shape=1)
