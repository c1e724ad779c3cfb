"""DeepZero's zeroth-order maths: coordinate-wise gradient estimates, the randomized estimate
ZO-GraSP builds on, ZO-GraSP's scores, and the layer-wise sparse masks.

Chen, Zhang, Jia, Diffenderfer, Liu, Parasyris, Zhang, Zhang, Kailkhura, Liu, "DeepZero: Scaling
up Zeroth-Order Optimization for Deep Model Training" (ICLR 2024, arXiv 2310.02025); the
authors' code OPTML-Group/DeepZero@5cf30b1 (``algorithm/zoo/gradient_estimate.py`` ``cge`` and
``rge``, ``algorithm/prune/importance_scores.py`` ``zoo_grasp_importance_score``,
``algorithm/prune/main.py`` ``global_prune``), re-derived here, not copied.

- CGE (coordinate-wise gradient estimation): for each coordinate ``i`` kept by the mask,
  ``g_i = (f(x + mu e_i) - f(x)) / mu``; every other coordinate's estimate is 0. One function
  evaluation per kept coordinate (plus the shared ``f(x)``).
- RGE (randomized gradient estimation), as ``rge`` of the reference: per sample, a Gaussian
  direction ``u`` per tensor, scaled to unit Frobenius norm per tensor, every tensor moved
  together by ``mu u``; ``g = (1/q) sum_samples mu u (f(x + mu u) - f(x)) / mu``. No dimension
  factor (the reference has none; ZO-GraSP only ranks the scores, and its second point
  ``x + mu g`` uses this scale).
- ZO-GraSP: ``Hg ~ (RGE(x + mu g0) - g0) / mu`` with ``g0 = RGE(x)`` (a finite difference of
  RGEs along ``g0``, the Hessian-gradient product GraSP needs), score ``-x * Hg``; global
  magnitude pruning keeps the ``(1 - sparsity)`` share of coordinates with the largest ``|score|``
  over all pruned tensors together, which fixes each tensor's kept share (its layer-wise ratio).
- The training mask of the reference is random within each tensor at that ratio
  (``layer_wise_random``): ``shuffled`` permutes a tensor's mask, keeping its count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Loss = Callable[[Tensor], Tensor]
"""``f(x)``: a scalar loss of one tensor (0-d tensor)."""

Losses = Callable[[Sequence[Tensor]], Tensor]
"""``f(xs)``: a scalar loss of several tensors moved together (0-d tensor)."""


def coordinate_estimate(
    f: Loss,
    x: Tensor,
    indices: Tensor,
    mu: float,
    base: Tensor | None = None,
    realized: bool = False,
) -> Tensor:
    """CGE of ``f`` at ``x``: ``(f(x + mu e_i) - f(x)) / mu`` at each flat index of ``indices``
    (a 1-D int64 tensor), 0 elsewhere; ``base`` is ``f(x)`` where already known.

    ``realized=True`` divides by the step ``x``'s dtype realises, ``h_i = fl(x_i + mu) - x_i``
    (the exact secant slope between the two points ``f`` saw), and moves ``x_i`` by one ulp
    where ``x_i + mu`` rounds back to ``x_i`` (bfloat16 from ``|x_i| >= 2`` at ``mu = 5e-3``),
    so no coordinate's estimate is silently 0; ``False`` divides by ``mu`` (the reference).

    One call of ``f`` per index (plus one for ``base`` when ``None``), on a working copy of ``x``
    that is moved one coordinate at a time and restored exactly (to the original value, not by
    subtracting ``mu``, so no rounding accumulates). ``f`` must not keep its argument: the copy
    is reused. The loop reads no value from the device: indices are sliced, not converted.
    """
    if base is None:
        base = f(x)
    estimate = torch.zeros_like(x)
    count = indices.numel()
    if count == 0:
        return estimate
    point = x.detach().clone()
    flat = point.view(-1)
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    starts = x.detach().reshape(-1).index_select(0, indices)
    moved = starts + mu
    if realized:
        up = torch.nextafter(starts, torch.full_like(starts, math.inf))
        moved = torch.where(moved == starts, up, moved)
    losses = []
    for j in range(count):
        at = indices[j : j + 1]
        flat.index_copy_(0, at, moved[j : j + 1])
        losses.append(f(point).reshape(()))
        flat.index_copy_(0, at, starts[j : j + 1])
    differences = torch.stack(losses).to(wide) - base.to(wide)
    values = differences / (moved.to(wide) - starts.to(wide) if realized else mu)
    estimate.view(-1).index_copy_(0, indices, values.to(x.dtype))
    return estimate


def unit_directions(
    shapes: Sequence[tuple[int, ...]], like: Tensor, generator: torch.Generator
) -> list[Tensor]:
    """One Gaussian direction per shape, each scaled to unit Frobenius norm (``+ 1e-8``, as the
    reference), drawn in order from ``generator``."""
    out = []
    for shape in shapes:
        u = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
        out.append(u / (torch.linalg.vector_norm(u) + 1e-8))
    return out


def random_estimate(
    f: Losses,
    xs: Sequence[Tensor],
    samples: int,
    mu: float,
    generator: torch.Generator,
    base: Tensor | None = None,
) -> list[Tensor]:
    """RGE of ``f`` at ``xs`` as the reference's ``rge`` (module docstring): ``samples``
    directions, each a unit direction per tensor moved together by ``mu``; ``1 + samples``
    evaluations (``samples`` when ``base`` is given)."""
    if base is None:
        base = f(xs)
    estimate = [torch.zeros_like(x) for x in xs]
    shapes = [tuple(x.shape) for x in xs]
    for _ in range(samples):
        steps = [mu * u for u in unit_directions(shapes, xs[0], generator)]
        derivative = (f([x + s for x, s in zip(xs, steps, strict=True)]) - base) / mu
        for e, s in zip(estimate, steps, strict=True):
            e.add_(s * (derivative.to(e.dtype) / samples))
    return estimate


def zo_grasp_scores(
    f: Losses,
    xs: Sequence[Tensor],
    samples: int,
    mu: float,
    generator: torch.Generator,
    base: Tensor | None = None,
) -> list[Tensor]:
    """ZO-GraSP's score ``-x * Hg`` per tensor, ``Hg = (RGE(x + mu g0) - g0) / mu`` with
    ``g0 = RGE(x)`` (module docstring); the two RGEs draw their directions one after the other
    from ``generator``. ``2 (samples + 1)`` evaluations (one fewer with ``base``)."""
    g0 = random_estimate(f, xs, samples, mu, generator, base)
    moved = [x + mu * g for x, g in zip(xs, g0, strict=True)]
    g1 = random_estimate(f, moved, samples, mu, generator)
    return [-x * (a - b) / mu for x, a, b in zip(xs, g1, g0, strict=True)]


def keep_largest(scores: Sequence[Tensor], sparsity: float) -> list[Tensor]:
    """Global magnitude pruning: boolean masks keeping the ``round((1 - sparsity) n)`` entries
    of largest ``|score|`` over all tensors together (``n`` entries in all); ties go to the
    earlier entry (``topk``'s order). Each mask's count is the tensor's layer-wise share."""
    flat = torch.cat([s.detach().reshape(-1).abs() for s in scores])
    keep = round((1.0 - sparsity) * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        chosen[torch.topk(flat, keep, sorted=False).indices] = True
    parts = chosen.split([s.numel() for s in scores])
    return [m.view(s.shape) for m, s in zip(parts, scores, strict=True)]


def random_mask(
    shape: tuple[int, ...], sparsity: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """A boolean mask keeping ``round((1 - sparsity) n)`` of its ``n`` entries, uniformly at
    random from ``generator``."""
    n = 1
    for size in shape:
        n *= size
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    keep = round((1.0 - sparsity) * n)
    mask[torch.randperm(n, generator=generator, device=device)[:keep]] = True
    return mask.view(shape)


def shuffled(mask: Tensor, generator: torch.Generator) -> Tensor:
    """``mask``'s entries at uniformly random new positions: the same count (the tensor's
    layer-wise ratio), without reading it on the host."""
    flat = mask.reshape(-1)
    order = torch.randperm(flat.numel(), generator=generator, device=mask.device)
    return flat[order].view(mask.shape)


def kept_indices(mask: Tensor) -> Tensor:
    """The flat indices a boolean mask keeps, ascending (one device read: their count)."""
    return mask.reshape(-1).nonzero().view(-1)
