"""The induced metric's closed forms against a dense inverse of ``I + xi g g^T`` (float64).

``sherman_morrison_`` over a vector stored in pieces equals ``(I + xi g g^T)^{-1} u`` from a
dense ``torch.linalg.inv`` of the concatenated vector's metric (measured max abs difference
2.9e-14 on sizes 1 to 55, the dense inverse's round-off at condition numbers up to ~700;
asserted 1e-13); ``scale_`` equals it for ``u = g`` only.
"""

from __future__ import annotations

import pytest
import torch

from orthoptim.functional.induced_metric import (
    scale_,
    sherman_morrison_,
    smoothed_trace,
    total_dot,
)


def dense_inverse(g: torch.Tensor, xi: float) -> torch.Tensor:
    """``(I + xi g g^T)^{-1}`` by a dense inverse: the definition, O(n^3)."""
    return torch.linalg.inv(torch.eye(g.numel(), dtype=g.dtype) + xi * torch.outer(g, g))


def pieces(shapes, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) * scale for s in shapes]


SHAPES = [[(1,)], [(7,)], [(4, 3), (5,)], [(6, 5), (4,), (3, 6), (2, 3, 2)]]


def flat(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in xs])


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize(("xi", "scale"), [(0.1, 1.0), (3.0, 2.0), (1e-4, 0.1)])
def test_sherman_morrison_equals_the_dense_inverse(shapes, xi, scale) -> None:
    gs, us = pieces(shapes, 0, scale), pieces(shapes, 1)
    want = dense_inverse(flat(gs), xi) @ flat(us)
    tau = xi * total_dot(gs, gs, torch.device("cpu"))
    got = flat(sherman_morrison_([u.clone() for u in us], gs, tau))
    worst = (got - want).abs().max().item()
    print(f"sherman-morrison {shapes} xi={xi}: {worst:.2g}")
    assert worst <= 1e-13
    # the metric does shrink u: not the identity
    assert (got - flat(us)).abs().max() > 1e-6


@pytest.mark.parametrize("shapes", SHAPES)
def test_scale_is_the_inverse_along_the_gradient_only(shapes) -> None:
    xi = 0.7
    gs = pieces(shapes, 2)
    inverse = dense_inverse(flat(gs), xi)
    tau = xi * total_dot(gs, gs, torch.device("cpu"))
    along = flat(scale_([g.clone() for g in gs], tau))
    assert torch.allclose(along, inverse @ flat(gs), rtol=0, atol=1e-14)
    if flat(gs).numel() > 1:  # a direction off the gradient is shrunk less than u / (1 + tau)
        us = pieces(shapes, 3)
        assert not torch.allclose(flat(scale_([u.clone() for u in us], tau)), inverse @ flat(us))


def test_a_zero_gradient_leaves_the_update_unchanged() -> None:
    us = pieces([(3, 2), (4,)], 4)
    gs = [torch.zeros_like(u) for u in us]
    tau = torch.tensor(5.0, dtype=torch.float64)  # a trace carried over from earlier steps
    out = sherman_morrison_([u.clone() for u in us], gs, tau)
    assert all(torch.equal(a, b) for a, b in zip(out, us, strict=True))


def test_smoothed_trace_is_a_bias_corrected_ema() -> None:
    average = torch.zeros((), dtype=torch.float64)
    traces = [2.0, 0.5, 4.0]
    plain = 0.0
    for t, x in enumerate(traces, 1):
        plain = 0.8 * plain + 0.2 * x
        average, tau = smoothed_trace(average, torch.tensor(x, dtype=torch.float64), 0.8, t)
        assert abs(tau.item() - plain / (1 - 0.8**t)) <= 1e-15
    _, tau = smoothed_trace(torch.tensor(7.0), torch.tensor(3.0), 0.0, 5)
    assert tau.item() == 3.0  # beta = 0: this step's trace
