"""Moment estimates shared by every adaptive transform: EMA, bias correction, Adam's direction."""

from __future__ import annotations

import math
from typing import Literal, cast, get_args, overload

import torch
from torch import Tensor


def stats_dtype(x: Tensor) -> torch.dtype:
    """float32 for 16-bit inputs, the input's own dtype otherwise: running statistics kept in
    16 bits underflow (``u^2`` of small values) and lose the precision an EMA accumulates."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def ema_(average: Tensor, x: Tensor, beta: float) -> Tensor:
    """In place ``average <- beta * average + (1 - beta) * x``; returns ``average``."""
    return average.lerp_(x, 1.0 - beta)


def ema_square_(average: Tensor, x: Tensor, beta: float) -> Tensor:
    """In place ``average <- beta * average + (1 - beta) * x^2``; returns ``average``."""
    return average.mul_(beta).addcmul_(x, x, value=1.0 - beta)


@overload
def bias_correction(beta: float, step: int) -> float: ...


@overload
def bias_correction(beta: float, step: int | Tensor) -> float | Tensor: ...


def bias_correction(beta: float, step: int | Tensor) -> float | Tensor:
    """``1 - beta^step``: the weight an EMA started at zero has put on its inputs after ``step``
    (a device tensor for a tensor ``step``, as a capturable step keeps it)."""
    return 1.0 - beta**step


def _sqrt(x: float | Tensor) -> float | Tensor:
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


EpsPlacement = Literal["debiased", "raw"]
EPS_PLACEMENTS: tuple[str, ...] = get_args(EpsPlacement)


def adam_direction(
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    step: int | Tensor,
    betas: tuple[float, float],
    eps: float,
    eps_placement: EpsPlacement = "debiased",
    out: Tensor | None = None,
) -> Tensor:
    """Adam's bias-corrected direction, in ``out`` if given.

    ``eps_placement="debiased"``: ``m_hat / (sqrt(v_hat) + eps)`` (torch.optim.Adam); the
    operation order follows torch's single-tensor path (eps added after dividing ``sqrt(v)`` by
    ``sqrt(1 - beta2^t)``), which keeps float64 results equal to torch's to round-off.
    ``"raw"``: ``m_hat sqrt(1 - beta2^t) / (sqrt(v) + eps)`` (the Adam paper's efficient form;
    HF transformers AdamW, Gunale0926/Grams): the same with ``eps / sqrt(1 - beta2^t)``.
    A tensor ``step`` (a capturable step's device counter) gives the bias corrections as device
    tensors, without a host read.
    ``out`` (same shape and dtype as the moments) saves the temporaries: on CPU each fresh
    full-size tensor costs an allocation and its page faults, a large share of an element-wise
    step; the values are the same bit for bit.
    """
    direction = exp_avg_sq.sqrt() if out is None else torch.sqrt(exp_avg_sq, out=out)
    if eps_placement == "raw":
        direction.add_(eps)
        torch.div(exp_avg, direction, out=direction)
        return direction.mul_(
            _sqrt(bias_correction(betas[1], step)) / bias_correction(betas[0], step)
        )
    direction.div_(_sqrt(bias_correction(betas[1], step))).add_(eps)
    torch.div(exp_avg, direction, out=direction)
    return direction.div_(bias_correction(betas[0], step))


def adam_direction_foreach(
    exp_avgs: list[Tensor] | tuple[Tensor, ...],
    exp_avg_sqs: list[Tensor],
    *,
    steps: list[int],
    betas: tuple[float, float],
    eps: float,
    eps_placement: EpsPlacement = "debiased",
    out: list[Tensor] | None = None,
) -> list[Tensor]:
    """``adam_direction`` of each pair, with multi-tensor ops: the same operations in the same
    order (equal bit for bit where the foreach kernels round as the single-tensor ones). The
    square roots go into ``out`` if given (one full-size set of temporaries fewer, as
    ``adam_direction``'s ``out``); the directions are new tensors."""
    bc1 = [bias_correction(betas[0], t) for t in steps]
    root2 = [math.sqrt(bias_correction(betas[1], t)) for t in steps]
    if out is None:
        # lists at run time; torch's stubs type the foreach results as tuples
        direction = cast(list[Tensor], torch._foreach_sqrt(exp_avg_sqs))
    else:
        direction = out
        torch._foreach_copy_(direction, exp_avg_sqs)
        torch._foreach_sqrt_(direction)
    if eps_placement == "raw":
        torch._foreach_add_(direction, eps)
        direction = cast(list[Tensor], torch._foreach_div(exp_avgs, direction))
        torch._foreach_mul_(direction, [r / b for r, b in zip(root2, bc1, strict=True)])
        return direction
    torch._foreach_div_(direction, root2)
    torch._foreach_add_(direction, eps)
    direction = cast(list[Tensor], torch._foreach_div(exp_avgs, direction))
    torch._foreach_div_(direction, bc1)
    return direction
