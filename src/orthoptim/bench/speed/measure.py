"""What ``orthoptim speed`` measures besides time: the machine's matmul rate, optimizer-state
bytes, a step's transient memory peak and its FLOPs (matmuls, and the standard estimates of the
eigen-, singular-value and QR decompositions); and the fixed parameters and gradients every
entrant steps."""

from __future__ import annotations

import ctypes
import functools
import gc
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from orthoptim.bench.shared.memory import reset_peak_rss, status_kib, tensors_in

Shape = tuple[int, int]


def _sides(a: Tensor) -> tuple[int, int, int]:
    """``(batch, m, n)`` of a (batched) matrix, ``m >= n``."""
    *batch, rows, cols = a.shape
    return math.prod(batch), max(rows, cols), min(rows, cols)


# Decompositions, counted as Golub & Van Loan (Matrix Computations, 4th ed.) estimate them:
# symmetric eigendecomposition 9 n^3 with vectors, 4 n^3 / 3 for the values (section 8.3);
# SVD of m x n (m >= n) 4 m n^2 - 4 n^3 / 3 for the values, 6 m n^2 + 20 n^3 with thin U and V,
# 4 m^2 n + 8 m n^2 + 9 n^3 with full ones (Golub-Reinsch, Figure 8.6.1); Householder QR
# 2 m n^2 - 2 n^3 / 3 for R, twice that with the thin Q formed (section 5.2). Counted at the
# torch.linalg call: under a dispatch mode (torch's FLOP counter) eigvalsh and svdvals compute
# the vectors too, so the aten op would not tell which was asked for.
def _eigh(a: Tensor, *_: Any, values_only: bool = False, **__: Any) -> int:
    batch, n, _n = _sides(a)
    return batch * (4 * n**3 // 3 if values_only else 9 * n**3)


def _svd(
    a: Tensor, full_matrices: bool = True, *_: Any, values_only: bool = False, **__: Any
) -> int:
    batch, m, n = _sides(a)
    if values_only:
        return batch * (4 * m * n**2 - 4 * n**3 // 3)
    if full_matrices:
        return batch * (4 * m**2 * n + 8 * m * n**2 + 9 * n**3)
    return batch * (6 * m * n**2 + 20 * n**3)


def _qr(a: Tensor, mode: str = "reduced", *_: Any, **__: Any) -> int:
    batch, m, n = _sides(a)
    r_only = 2 * m * n**2 - 2 * n**3 // 3
    return batch * (r_only if mode == "r" else 2 * r_only)


DECOMPOSITIONS: dict[Callable[..., Any], Callable[..., int]] = {
    torch.linalg.eigh: _eigh,
    torch.linalg.eigvalsh: functools.partial(_eigh, values_only=True),
    torch.linalg.svd: _svd,
    torch.linalg.svdvals: functools.partial(_svd, values_only=True),
    torch.linalg.qr: _qr,
}


class DecompositionFlops(TorchFunctionMode):
    """Adds up the estimated FLOPs (``DECOMPOSITIONS``) of the decompositions run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        estimate = DECOMPOSITIONS.get(func)
        if estimate is not None:
            self.flops += estimate(*args, **kwargs)
        return func(*args, **kwargs)


class MatmulProbe:
    """``repeats`` ``size``-square matmuls in ``dtype`` as one entry of a benchmark round: timed
    once per round among the optimizer steps and about as long as a Muon step, so that the rate
    it gives (``flops`` / its median time) is measured under the same conditions, over the same
    time scale, as their medians."""

    def __init__(self, dtype: torch.dtype, size: int, repeats: int) -> None:
        self.a = torch.randn(size, size).to(dtype)
        self.b = torch.randn(size, size).to(dtype)
        self.out = torch.empty(size, size, dtype=dtype)
        self.repeats = repeats
        self.flops = 2 * size**3 * repeats

    def step(self) -> None:
        for _ in range(self.repeats):
            torch.mm(self.a, self.b, out=self.out)


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of one ``size``-square matmul in ``dtype`` on this machine: its
    best moment, reported beside the floor's rate (a ``MatmulProbe``'s median among the steps)."""
    product = MatmulProbe(dtype, size, 1)
    product.step()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        product.step()
        best = min(best, time.perf_counter() - start)
    return product.flops / best


def stream_rate(elements: int = 1 << 24, repeats: int = 5) -> float:
    """Bytes/s of the fastest streaming kernel measured here, best of ``repeats`` each, with
    torch's threads, on buffers of ``elements`` float32 (several times a CPU's last-level
    cache): a ``copy_`` (read and write) and torch's fused AdamW kernel (reads four tensors,
    writes three). The rate behind the memory floor: a kernel with several streams in flight
    moves more bytes per second than a copy (on the AMX Xeon VM of the curated records, 47 GB/s
    against 26), so the copy alone would put the floor above steps that beat it."""
    p, g, m, v = (torch.full((elements,), x) for x in (1.0, 1e-3, 0.0, 0.0))
    out = torch.empty_like(p)
    step = torch.tensor(1.0)

    def adamw() -> None:
        torch._fused_adamw_(
            [p], [g], [m], [v], [], [step], lr=1e-3, beta1=0.9, beta2=0.95,
            weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
        )  # fmt: skip

    best = 0.0
    for run, nbytes in ((lambda: out.copy_(p), 8 * elements), (adamw, 28 * elements)):
        run()
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = max(best, nbytes / (time.perf_counter() - start))
    return best


def memory_floor_bytes(param_bytes: int, state_bytes: int) -> int:
    """The fewest bytes a step can move: each gradient read, each parameter read and written,
    the optimizer's state read once (writes of state not counted, so a step that rewrites only
    part of its state, as M-FAC's window, is not charged for the rest)."""
    return 3 * param_bytes + state_bytes


def _optimizers(stepper: Any) -> list[Any]:
    if isinstance(stepper, torch.optim.Optimizer):
        return [stepper]
    return [o for inner in getattr(stepper, "optimizers", ()) for o in _optimizers(inner)]


def state_bytes(stepper: Any, params: Sequence[torch.Tensor]) -> int:
    """Bytes of every distinct tensor the optimizer keeps in ``state``: parameters and 0-D
    step counters excluded (a few bytes per tensor, not per parameter element)."""
    own = {p.data_ptr() for p in params}
    seen: dict[int, int] = {}
    for opt in _optimizers(stepper):
        for t in tensors_in(dict(opt.state)):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in own and t.ndim > 0:
                seen[ptr] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _release_cached_memory() -> bool:
    """Make the C allocator hand freed memory back to the OS, so that memory a step reuses
    shows up in the resident set again: large blocks (>= 64 KiB) are mapped and unmapped on
    their own from now on (``mallopt(M_MMAP_THRESHOLD)``; this also stops glibc from raising
    the threshold), and the heap's free pages are released (``malloc_trim``). glibc only;
    called after the timed rounds, since separate mappings make allocation slower."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        ok = libc.mallopt(m_mmap_threshold, 64 * 1024) == 1
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return ok


def transient_peak(step: Callable[[], Any]) -> int | None:
    """Resident-set high-water mark during ``step()`` above the resident set before it, bytes;
    ``None`` where the C allocator's cache cannot be released or ``/proc`` is unavailable."""
    gc.collect()
    if not _release_cached_memory():
        return None
    before = status_kib("VmRSS")
    if not reset_peak_rss():
        return None
    step()
    peak = status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024


def count_flops(
    step: Callable[[], Any],
    period: int = 1,
    params: Sequence[torch.Tensor] = (),
    grads: Sequence[torch.Tensor] = (),
    prepare: Callable[[], Any] | None = None,
) -> int:
    """FLOPs of one ``step()``: torch's FLOP counter (mm, bmm, addmm, baddbmm, ...) plus the
    decompositions' estimates (``DecompositionFlops``), averaged over ``period`` steps for
    periodic work; before each, ``prepare()`` (not counted)
    and the gradients reset."""
    total = 0
    for _ in range(period):
        if prepare is not None:
            prepare()
        set_grads(params, grads)
        with FlopCounterMode(display=False) as counter, DecompositionFlops() as decompositions:
            step()
        total += int(counter.get_total_flops()) + decompositions.flops
    return total // period


def fixed_params(
    shapes: Sequence[Shape], seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    return params, grads


def set_grads(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    """Give every parameter its fixed gradient again: some peers (heavyball) drop ``p.grad``
    after a step, and would otherwise step nothing from the second round on."""
    for p, g in zip(params, grads, strict=True):
        p.grad = g
