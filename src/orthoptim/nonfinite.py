"""The non-finite gradient policy: one check before a step writes anything, and what a step
does when it fails (``ChainOptimizer(nonfinite=...)``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast, get_args

import torch
from torch import Tensor

from orthoptim.distributed import DistributedStep, local_tensor
from orthoptim.functional.moments import stats_dtype

NonFinitePolicy = Literal["raise", "skip", "off"]
NONFINITE_POLICIES: tuple[str, ...] = get_args(NonFinitePolicy)


class NonFiniteGradientError(RuntimeError):
    """A gradient holds NaN or Inf, or a value whose square overflows (``|g| > 1.8e19`` in
    float32 and 16-bit, ``1.3e154`` in float64); raised before any parameter or state changes."""


def square_limit(grad: Tensor) -> float:
    """The largest |g| whose square the dtype statistics are kept in (float32 for 16-bit
    gradients) still holds: second moments, norms and Kronecker factors square the gradient."""
    return math.sqrt(torch.finfo(stats_dtype(grad)).max)


_DOT_DTYPES = frozenset({torch.float32, torch.float64, torch.bfloat16})


def all_finite(grads: Sequence[Tensor]) -> bool:
    """Whether every gradient entry is finite and its square is too.

    A square that overflows is as bad as an Inf: second moments, Frobenius norms and
    Kronecker factors all square the gradient, so beyond ``sqrt(max)`` of the dtype the
    statistics are computed in (float32 for 16-bit gradients; 1.8e19) they become Inf.

    One host read in the common case. Each gradient's sum of squares (``torch.dot``, one
    vectorised pass) is finite exactly when every entry is finite and no square or partial sum
    overflows, which proves the gradient fine; where one is not finite (an Inf or NaN, or only
    a sum that overflows), that gradient is checked exactly by its min and max. float16
    gradients (whose own dot overflows at 65504) and non-contiguous ones go to the exact check
    directly.
    """
    sums: list[Tensor] = []
    summed: list[Tensor] = []
    exact: list[Tensor] = []
    for g in grads:
        if not g.numel() or g.is_meta:  # meta tensors hold no values to check
            continue
        if g.dtype in _DOT_DTYPES and g.is_contiguous():
            flat = g.view(-1)
            sums.append(torch.dot(flat, flat).to(torch.float64))
            summed.append(g)
        else:
            exact.append(g)
    if sums and not bool(torch.stack(sums).isfinite().all()):
        exact += [g for g, s in zip(summed, sums, strict=True) if not s.isfinite()]
    return _exactly_finite(exact)


def _exactly_finite(grads: Sequence[Tensor]) -> bool:
    """``all_finite`` by each gradient's min and max, which bound all its elements (NaN
    propagates, and unlike a sum of squares they cannot overflow): one pass per gradient."""
    extremes, limits = [], []
    for g in grads:
        extremes.extend(e.double() for e in torch.aminmax(g))
        limits.extend([square_limit(g)] * 2)
    if not extremes:
        return True
    bound = torch.tensor(limits, dtype=torch.float64, device=extremes[0].device)
    return bool((torch.stack(extremes).abs() <= bound).all())


def fault(grad: Tensor) -> str:
    """What makes ``grad`` unusable, in words (for the error message)."""
    if not torch.isfinite(grad).all():
        return "NaN or Inf"
    limit = square_limit(grad)
    return (
        f"|g| = {grad.abs().max().item():.3g}, whose square overflows {stats_dtype(grad)} "
        f"(the limit is {limit:.3g})"
    )


def step_is_finite(
    grads: list[Tensor],
    distributed: DistributedStep | None,
    check: Callable[[list[Tensor]], bool] = all_finite,
) -> bool:
    """Whether ``check`` finds every gradient of this step usable, on every rank where
    distributed (all ranks then raise or skip together)."""
    if distributed is None or not grads:
        return check(grads)
    return distributed.all_finite(grads, check)


def raise_for(
    work: Iterable[tuple[Mapping[str, Any], Sequence[tuple[str, Tensor]]]],
) -> None:
    """Raise ``NonFiniteGradientError`` naming the first parameter of ``work`` whose gradient
    fails the check (on another rank where none here does)."""
    name, why = next(
        (
            (n or f"<unnamed {tuple(p.shape)}>", fault(local_tensor(cast(Tensor, p.grad))))
            for _, params in work
            for n, p in params
            if not all_finite([local_tensor(cast(Tensor, p.grad))])
        ),
        ("<one held by another rank>", "NaN, Inf or a value whose square overflows"),
    )
    raise NonFiniteGradientError(
        f"gradient of parameter {name} holds {why}; nothing was updated (pass "
        "nonfinite='skip' to skip such steps instead)"
    )
