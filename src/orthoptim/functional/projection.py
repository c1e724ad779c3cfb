"""Low-rank gradient projections: the DCT-II basis, subspace selection, projecting down and up.

Every function works on an *oriented* matrix ``x`` of shape ``(m, n)`` with ``m >= n``: the
projection acts on its last (shorter) side, ``low = x P`` with ``P`` an ``(n, r)`` matrix with
orthonormal columns, ``x ~ low P^T``. ``oriented`` turns a ``rows < cols`` gradient into that
form by transposing it, which is GaLore's ``"std"`` choice (project the shorter side).

Four ways to choose ``P`` within one matrix (FRUGAL, arXiv 2411.07837; GaLore, arXiv
2403.03507; the SVD-free DCT projection, arXiv 2505.17967):
  ``"dct"``: the ``r`` columns of the orthonormal DCT-II basis best aligned with ``x`` (largest
  ``||x b_k||``); only their indices need storing, the basis is fixed and rebuilt on demand.
  ``"svd"``: the top ``r`` right singular vectors of ``x`` (GaLore).
  ``"random"``: a random ``n x r`` matrix with orthonormal columns (FRUGAL's ``random``).
  ``"block"``: ``r`` random coordinates, i.e. columns of the identity (FRUGAL's RandK over
  columns, GaLore-``randperm``); only their indices need storing.

and one across the matrices of a route, ``"blocks"`` (FRUGAL's BAdam-like ``BlockOptimizer``,
its headline setting): whole tensors are state-full or state-free, a ``fraction`` of them at a
time, the set moving every period in a ``BlockOrder`` (``active_block``).
"""

from __future__ import annotations

import functools
import math
from typing import Literal, get_args

import torch
from torch import Tensor

Projection = Literal["blocks", "dct", "svd", "random", "block"]
PROJECTIONS: tuple[str, ...] = get_args(Projection)
# Projections whose subspace is a set of columns of a fixed basis: state holds indices only.
INDEX_PROJECTIONS: tuple[str, ...] = ("dct", "block")
BlockOrder = Literal["descending", "ascending", "random", "mirror"]
BLOCK_ORDERS: tuple[str, ...] = get_args(BlockOrder)


def oriented(x: Tensor) -> Tensor:
    """``x`` if it has at least as many rows as columns, else ``x^T`` (a view either way)."""
    return x if x.shape[0] >= x.shape[1] else x.mT


def subspace_rank(n: int, fraction: float) -> int:
    """``round(n * fraction)`` clamped to ``[1, n]``: at least one direction is kept."""
    return max(1, min(n, round(n * fraction)))


@functools.lru_cache(maxsize=16)
def _dct_basis(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    j = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.to(dtype=dtype, device=device)


def dct_basis(
    n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """The orthonormal DCT-II basis of size ``n``, one basis vector per column.

    ``B[j, k] = sqrt(2/n) c_k cos(pi (2j+1) k / (2n))`` with ``c_0 = 1/sqrt(2)``, ``c_k = 1``
    otherwise, so ``B^T B = I`` and ``B^T x`` is ``scipy.fft.dct(x, type=2, norm="ortho")``.
    Built in float64 once per ``(n, dtype, device)`` and kept in a bounded cache (16 entries, a
    few MB at transformer widths): one entry per device, so no tensor crosses devices, and an
    evicted basis is simply rebuilt (O(n^2)). The result is shared: never write into it.
    """
    return _dct_basis(n, dtype, torch.device(device))


def top_aligned_columns(x: Tensor, basis: Tensor, rank: int) -> Tensor:
    """Indices of the ``rank`` columns ``b_k`` of ``basis`` with the largest ``||x b_k||_2``, in
    ascending order (one matmul and a top-k, the DCT paper's selection). Ascending, not by score:
    moments kept across a refresh then stay with their column whenever the selected set is
    unchanged (always at full rank), and gathers read memory in order."""
    scores = (x @ basis).square().sum(dim=0)
    return torch.topk(scores, rank, sorted=False).indices.sort().values


def svd_columns(x: Tensor, rank: int) -> Tensor:
    """The top ``rank`` right singular vectors of ``x`` as an ``(n, rank)`` matrix (GaLore)."""
    return torch.linalg.svd(x, full_matrices=False).Vh[:rank].mT


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """``x`` (on the CPU) copied to ``device`` without making the host wait: a CUDA target gets
    the copy from pinned memory, ``non_blocking`` (a pageable copy waits for the stream). The
    pinned block stays reserved until the copy has run (torch's caching host allocator)."""
    device = torch.device(device)
    if device.type == "cpu":
        return x
    if device.type == "cuda" and torch.cuda.is_available():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def random_columns(
    n: int,
    rank: int,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> Tensor:
    """An ``(n, rank)`` matrix with orthonormal columns on ``device``: QR of a Gaussian matrix.

    The Gaussian is drawn on the CPU from ``generator`` in float64, so the same seed draws the
    same matrix on every device; it is copied to ``device`` (``to_device``) and orthonormalised
    there, in float64, then rounded to ``dtype``. Different devices' QR kernels agree to
    float64 round-off, far below ``dtype``'s when that is float32."""
    gaussian = to_device(torch.randn(n, rank, generator=generator, dtype=torch.float64), device)
    return torch.linalg.qr(gaussian).Q.to(dtype)


def random_block(
    n: int, rank: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """``rank`` distinct coordinates out of ``n``, ascending, drawn from ``generator`` on the CPU
    (the same seed, the same coordinates on every device) and copied to ``device``."""
    return to_device(torch.randperm(n, generator=generator)[:rank].sort().values, device)


def choose_subspace(projection: str, x: Tensor, rank: int, generator: torch.Generator) -> Tensor:
    """The new subspace for gradient ``x``: column indices (``"dct"``, ``"block"``) or the
    ``(n, rank)`` matrix (``"svd"``, ``"random"``), on ``x``'s device; ``generator`` (a CPU
    generator) feeds the random ones.

    ``x`` is first rescaled by a power of two, which is exact: 1e-30 gradients then do not
    underflow in the scores or the SVD, and the chosen subspace is the same."""
    n = x.shape[1]
    x = torch.ldexp(x, -torch.frexp(x.abs().amax()).exponent)
    if projection == "dct":
        return top_aligned_columns(x, dct_basis(n, dtype=x.dtype, device=x.device), rank)
    if projection == "block":
        return random_block(n, rank, generator, x.device)
    if projection == "svd":
        return svd_columns(x, rank)
    return random_columns(n, rank, generator, x.dtype, x.device)


def basis_columns(
    projection: str, n: int, indices: Tensor, *, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The ``(n, r)`` matrix of an index projection: DCT columns or identity columns."""
    if projection == "dct":
        return dct_basis(n, dtype=dtype, device=device)[:, indices]
    # Only built at a refresh with moment rotation, so the n x n identity is affordable.
    return torch.eye(n, dtype=dtype, device=device)[:, indices]


def project_down(
    x: Tensor, *, basis: Tensor | None = None, indices: Tensor | None = None
) -> Tensor:
    """``x P``: by a matmul, or (``basis=None``) by gathering the columns ``indices``."""
    return x @ basis if basis is not None else x[:, indices]


def project_up(
    low: Tensor, n: int, *, basis: Tensor | None = None, indices: Tensor | None = None
) -> Tensor:
    """``low P^T``: by a matmul, or (``basis=None``) by scattering into columns ``indices``."""
    if basis is not None:
        return low @ basis.mT
    if indices is None:
        raise TypeError("project_up takes a basis or column indices")
    out = low.new_zeros(low.shape[0], n)
    return out.index_copy_(1, indices, low)


def rotate_moments(exp_avg: Tensor, exp_avg_sq: Tensor, old: Tensor, new: Tensor) -> None:
    """Carry Adam's moments from subspace ``old`` to ``new`` (both ``(n, r)``), in place:
    ``m <- m R``, ``v <- |v R|`` with ``R = old^T new`` (the DCT reference's
    ``rotate_subspace``; ``v R`` can be negative, hence the absolute value)."""
    rotation = old.mT @ new
    exp_avg.copy_(exp_avg @ rotation)
    exp_avg_sq.copy_((exp_avg_sq @ rotation).abs_())


def block_count(size: int, fraction: float) -> int:
    """How many of a route's ``size`` tensors are state-full at once: ``round(size *
    fraction)`` (Python's rounding, half to even, as FRUGAL's ``num_active_blocks``), at least
    one where the route has any."""
    return min(size, max(1, round(size * fraction)))


@functools.lru_cache(maxsize=64)
def _random_blocks(period: int, size: int, count: int) -> frozenset[int]:
    generator = torch.Generator().manual_seed(period * 2654435761 % 2**63)
    return frozenset(torch.randperm(size, generator=generator)[:count].tolist())


def active_block(order: str, period: int, position: int, size: int, count: int) -> bool:
    """Whether tensor ``position`` of ``size`` is among the ``count`` state-full ones in
    ``period`` (0-based: steps ``period * update_every + 1 ...``), a pure function of its
    arguments, so a resumed run and every rank agree without state or communication.

    The orders of FRUGAL's ``BlockOptimizer`` (``block_order``), which walks a cursor through
    the tensors, wrapping around: ``"descending"`` (its headline runs) takes ``count`` tensors
    from the last one down, the next period the ``count`` below them; ``"ascending"`` the same
    from the first one up; ``"mirror"`` ``count / 2`` from the front walking up and their
    mirror images from the back (``count`` even; with ``size`` odd the middle tensor is never
    state-full, as in the reference); ``"random"`` ``count`` distinct tensors drawn afresh each
    period from a generator seeded by the period (the reference draws from the global RNG).
    """
    if order == "descending":
        start = (size - 1 - period * count) % size
        return (start - position) % size < count
    if order == "ascending":
        return (position - period * count) % size < count
    if order == "mirror":
        half, width = size // 2, count // 2
        start = (period * width) % half
        if position < half:
            return (position - start) % half < width
        return position >= size - half and (size - 1 - position - start) % half < width
    return position in _random_blocks(period, size, count)
