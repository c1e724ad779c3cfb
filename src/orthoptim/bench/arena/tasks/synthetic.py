"""Quick diagnostics with generated data: an ill-conditioned quadratic and matrix sensing.

Both are matrix-shaped, so a matrix optimizer sees a hidden matrix (a vector-shaped quadratic
would only ever reach the AdamW route of a plan). The problem instance is drawn from a fixed
generator, the same for every optimizer and seed; the run's seed draws the initial point (and,
for matrix sensing, the order of measurements).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from orthoptim.bench.arena.tasks.base import Target, seeded, shuffled_batches


class MatrixParameter(nn.Module):
    """A single matrix parameter ``weight`` (routed as a hidden matrix)."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init)


class Factorized(nn.Module):
    """``U @ V.T`` with both factors as hidden matrices (Burer-Monteiro)."""

    def __init__(self, u: Tensor, v: Tensor) -> None:
        super().__init__()
        self.u = nn.Parameter(u)
        self.v = nn.Parameter(v)

    def forward(self) -> Tensor:
        return self.u @ self.v.T


@functools.lru_cache(maxsize=8)
def _quadratic_instance(dim: int, cond: float) -> tuple[Tensor, Tensor]:
    """``(H, W*)``: ``H = Q diag(lambda) Q^T`` with eigenvalues log-spaced in ``[1/cond, 1]``,
    ``Q`` a random rotation (so no element-wise rescaling diagonalises it)."""
    g = seeded(1234)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, -math.log10(cond), dim, dtype=torch.float64)
    h = (q * eig) @ q.T
    w_star = torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    return h.float(), w_star.float()


@dataclass(frozen=True, slots=True, kw_only=True)
class Quadratic:
    """``f(W) = 1/2 tr((W - W*)^T H (W - W*))`` with condition number ``cond``; full-batch.

    Metric: ``rel_loss = f(W) / f(0)`` (also the lr-selection metric); target: a stated
    ``rel_loss``. Diagnostic only: preconditioning and orthogonalised updates should help here.
    """

    name: str = "quadratic"
    dim: int = 32
    cond: float = 1e3
    steps: int = 300
    eval_every: int = 5
    target: Target = field(default_factory=lambda: Target("rel_loss", 1e-2, "min"))
    select_metric: str = "rel_loss"

    def model(self, seed: int) -> nn.Module:
        init = torch.randn(self.dim, self.dim, generator=seeded(seed)) / math.sqrt(self.dim)
        return MatrixParameter(init)

    def batches(self, seed: int) -> Iterator[None]:
        while True:
            yield None

    def _f(self, w: Tensor) -> Tensor:
        h, w_star = _quadratic_instance(self.dim, self.cond)
        e = w - w_star
        return 0.5 * (e * (h @ e)).sum()

    def loss(self, model: nn.Module, batch: None) -> Tensor:
        return self._f(cast(Tensor, model.weight))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        f0 = self._f(torch.zeros(self.dim, self.dim)).item()
        return {"rel_loss": self._f(cast(Tensor, model.weight)).item() / f0}

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "target": self.target.as_dict(),
            "source": "generated: H = Q diag(logspace(0, -log10(cond))) Q^T, seed 1234",
            "model": f"MatrixParameter({self.dim}x{self.dim})",
        }


@functools.lru_cache(maxsize=8)
def _sensing_instance(
    rows: int, cols: int, rank: int, measurements: int, held_out: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(M*, A_train, y_train, A_val, y_val)``: a rank-``rank`` matrix of unit RMS and
    Gaussian measurements ``y_i = <A_i, M*>`` with ``E y_i^2 = 1``."""
    g = seeded(4321)
    m = torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g)
    m = m / m.square().mean().sqrt()
    a = torch.randn(measurements + held_out, rows, cols, generator=g) / math.sqrt(rows * cols)
    y = (a * m).sum((1, 2))
    return m, a[:measurements], y[:measurements], a[measurements:], y[measurements:]


@dataclass(frozen=True, slots=True, kw_only=True)
class MatrixSensing:
    """Recover a low-rank ``M*`` from minibatches of linear measurements, as ``U V^T``.

    Metrics: ``val_loss`` (mean squared error on held-out measurements, picks the lr) and
    ``rel_error = ||U V^T - M*||_F / ||M*||_F`` (the target). Factors of width ``2 * rank`` start
    small (``init_scale``), so the optimizer must find the low-rank solution.
    """

    name: str = "matrix_sensing"
    rows: int = 32
    cols: int = 32
    rank: int = 2
    measurements: int = 768
    held_out: int = 256
    batch_size: int = 64
    init_scale: float = 0.1
    steps: int = 300
    eval_every: int = 10
    target: Target = field(default_factory=lambda: Target("rel_error", 0.1, "min"))
    select_metric: str = "val_loss"

    def _instance(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _sensing_instance(self.rows, self.cols, self.rank, self.measurements, self.held_out)

    def model(self, seed: int) -> nn.Module:
        g, width = seeded(seed), 2 * self.rank
        scale = self.init_scale / math.sqrt(width)
        u = torch.randn(self.rows, width, generator=g) * scale
        v = torch.randn(self.cols, width, generator=g) * scale
        return Factorized(u, v)

    def batches(self, seed: int) -> Iterator[Tensor]:
        yield from shuffled_batches(self.measurements, self.batch_size, seed)

    def loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        _, a, y, _, _ = self._instance()
        pred = (a[batch] * model()).sum((1, 2))
        return (pred - y[batch]).square().mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        m, _, _, a_val, y_val = self._instance()
        w = model()
        return {
            "val_loss": ((a_val * w).sum((1, 2)) - y_val).square().mean().item(),
            "rel_error": ((w - m).norm() / m.norm()).item(),
        }

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "target": self.target.as_dict(),
            "source": "generated: rank-r M* and Gaussian measurements, seed 4321",
            "model": f"Factorized(U {self.rows}x{2 * self.rank}, V {self.cols}x{2 * self.rank})",
        }
