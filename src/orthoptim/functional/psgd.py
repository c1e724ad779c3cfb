"""PSGD's Kronecker-factored preconditioner fitted on a Lie group (arXiv 1512.04202, 2402.11858).

A matrix gradient ``G`` (m x n) is preconditioned as ``P G = Q_L^T Q_L G Q_R^T Q_R``, i.e.
``P = (Q_R^T Q_R) kron (Q_L^T Q_L)`` on ``vec(G)``. Each factor ``Q`` is either an upper
triangular matrix (the group of invertible upper triangular matrices) or a positive diagonal
(a vector here). Gradient whitening fits ``P`` to the criterion
``E[h^T P h + v^T P^{-1} v]`` with ``h`` the gradient (or momentum) and ``v ~ N(0, I)`` a probe:
its minimiser satisfies ``P E[h h^T] P = I``, i.e. ``P = E[h h^T]^{-1/2}``.

With ``A = Q_L H Q_R^T`` and ``B = Q_L^{-T} V Q_R^{-1}`` the relative (Lie-group) gradient of
the criterion w.r.t. ``Q_L`` is ``A A^T - B B^T`` (w.r.t. ``Q_R``: ``A^T A - B^T B``); the step
``dQ = E Q`` ("EQ") keeps ``Q`` triangular by ``triu`` of that gradient, and its size is
normalised by a lower bound of the spectral norm of ``A A^T + B B^T`` (the diagonal case: the
max-norm of the row sums), so ``lr`` in (0, 1) is a relative step on the group.
"""

from __future__ import annotations

import functools
import math
import random
from typing import Literal, get_args

import torch
from torch import Tensor

MemorySaveMode = Literal["none", "one_diag", "smart_one_diag", "all_diag"]
MEMORY_SAVE_MODES: tuple[str, ...] = get_args(MemorySaveMode)

NORMALIZER_EPS = torch.finfo(torch.bfloat16).tiny
"""Added to the step's normaliser (the Kron references' ``eps``): only guards a zero norm."""


def triangular_sides(
    rows: int, cols: int, max_size: int, memory_save_mode: str
) -> tuple[bool, bool]:
    """Which of ``(Q_L, Q_R)`` are triangular matrices (the others are diagonals).

    A side of size 1 or over ``max_size`` is diagonal; ``memory_save_mode``: ``"none"`` no
    other; ``"one_diag"`` the largest side (the columns on a tie, as the references' reversed
    ``argsort``); ``"smart_one_diag"`` the
    largest side only when strictly larger than the other; ``"all_diag"`` both (the Kron
    references' ``memory_save_mode``, over the two sides of the matrix view).
    """
    sizes = (rows, cols)
    diag = [False, False]
    largest = 0 if rows > cols else 1
    if memory_save_mode == "one_diag":
        diag[largest] = True
    elif memory_save_mode == "smart_one_diag":
        diag[largest] = rows != cols
    elif memory_save_mode == "all_diag":
        diag = [True, True]
    return (
        not (diag[0] or sizes[0] == 1 or sizes[0] > max_size),
        not (diag[1] or sizes[1] == 1 or sizes[1] > max_size),
    )


def update_probability(
    step: int, max_prob: float, min_prob: float, decay: float, flat_start: int
) -> float:
    """The probability of a preconditioner update at 1-based ``step``:
    ``clamp(max_prob exp(-decay (step - 1 - flat_start)), min_prob, max_prob)`` (the Kron
    references' anneal: ``max_prob`` for ``flat_start`` steps, then exponential decay)."""
    exponent = -decay * (step - 1 - flat_start)
    if exponent >= 0:  # inside the flat start: max_prob, and exp would overflow for long ones
        return max_prob
    return min(max(max_prob * math.exp(exponent), min_prob), max_prob)


@functools.lru_cache(maxsize=16)
def _counter_decisions(
    max_prob: float, min_prob: float, decay: float, flat_start: int
) -> list[bool]:
    return []


def counter_decision(
    step: int, max_prob: float, min_prob: float, decay: float, flat_start: int
) -> bool:
    """Whether 1-based ``step`` updates the preconditioner under the counter rule: a counter
    grows by one per step and an update happens (and resets it) when it reaches
    ``1 / p(step)``. Deterministic from the step alone (replayed once, then cached), so a
    resumed run makes the same decisions without any state."""
    decisions = _counter_decisions(max_prob, min_prob, decay, flat_start)
    if len(decisions) < step:
        counter = 0
        # Replay the counter up to the last cached decision to resume it.
        for done in decisions[::-1]:
            if done:
                break
            counter += 1
        for s in range(len(decisions) + 1, step + 1):
            p = update_probability(s, max_prob, min_prob, decay, flat_start)
            counter += 1
            hit = p > 0 and counter >= 1.0 / p
            decisions.append(hit)
            counter = 0 if hit else counter
    return decisions[step - 1]


UpdateRule = Literal["counter", "bernoulli"]
UPDATE_RULES: tuple[str, ...] = get_args(UpdateRule)
BALANCE_STREAM, BERNOULLI_STREAM = 0, 1
"""The ``host_uniform`` streams of the balance and of the Bernoulli update decisions."""


def updates_at(
    rule: str,
    step: int,
    seed: int,
    prob_max: float,
    prob_min: float,
    prob_decay: float,
    prob_flat_start: int,
) -> bool:
    """Whether 1-based ``step`` updates the preconditioner under ``rule``: ``"counter"``
    (``counter_decision``) or ``"bernoulli"`` (a ``host_uniform`` draw under
    ``update_probability``). A function of the step and seed only."""
    schedule = (prob_max, prob_min, prob_decay, prob_flat_start)
    if rule == "counter":
        return counter_decision(step, *schedule)
    return host_uniform(seed, step, BERNOULLI_STREAM) < update_probability(step, *schedule)


def host_uniform(seed: int, step: int, stream: int) -> float:
    """A uniform draw in [0, 1) on the host from ``(seed, step, stream)``: the same in a resumed
    run, and never a device read."""
    return random.Random(f"{seed}/{step}/{stream}").random()


def probe(
    shape: tuple[int, ...], seed: int, step: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The probe ``V ~ N(0, I)`` at ``step``, from a generator on ``device`` seeded by
    ``(seed, step)``: a resumed run draws the same probes. Every parameter of a step gets the
    same draw (each preconditioner is fitted on its own, so the probes need not be independent
    across parameters): a stacked weight then steps exactly as its separate matrices, and a
    parameter as under any wrapper that renames it (DDP's ``module.``)."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step * 2654435761) % 2**63)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def spectral_norm_lower_bound(a: Tensor) -> Tensor:
    """A lower bound of ``||A||_2`` for a symmetric ``A``: two power steps from its largest
    column, ``||A x|| / ||x||`` with ``x = A c`` (``c`` the column of largest norm), computed on
    ``A / max|A|`` against under/overflow. A zero matrix gives 0. No host read."""
    scale = a.abs().amax()
    a = a / torch.where(scale > 0, scale, torch.ones_like(scale))
    column = a.index_select(1, (a * a).sum(dim=0).argmax().reshape(1)).flatten()
    x = a @ column
    x = x / torch.linalg.vector_norm(x).clamp_min(torch.finfo(a.dtype).tiny)
    return scale * torch.linalg.vector_norm(a @ x)


def _apply_left(q: Tensor, x: Tensor) -> Tensor:
    """``Q x`` for a triangular matrix or a diagonal (vector) ``Q``."""
    return q @ x if q.dim() == 2 else q[:, None] * x


def _apply_right_t(q: Tensor, x: Tensor) -> Tensor:
    """``x Q^T`` for a triangular matrix or a diagonal (vector) ``Q``."""
    return x @ q.mT if q.dim() == 2 else x * q[None, :]


def whitening_pair(ql: Tensor, qr: Tensor, h: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(A, B) = (Q_L H Q_R^T, Q_L^{-T} V Q_R^{-1})``; the inverses by triangular solves."""
    a = _apply_right_t(qr, _apply_left(ql, h))
    b = torch.linalg.solve_triangular(ql.mT, v, upper=False) if ql.dim() == 2 else v / ql[:, None]
    if qr.dim() == 2:
        b = torch.linalg.solve_triangular(qr, b, upper=True, left=False)
    else:
        b = b / qr[None, :]
    return a, b


def _side_terms(a: Tensor, b: Tensor, side: int, matrix: bool) -> tuple[Tensor, Tensor]:
    """``(A A^T, B B^T)`` (left, ``side`` 0) or ``(A^T A, B^T B)`` (right); their diagonals
    for a diagonal factor."""
    if not matrix:
        return (a * a).sum(dim=1 - side), (b * b).sum(dim=1 - side)
    if side == 0:
        return a @ a.mT, b @ b.mT
    return a.mT @ a, b.mT @ b


UPPER_PRODUCT_BLOCK = 512
"""Below this size ``upper_product`` is one dense product (the split saves nothing there)."""


def upper_product(x: Tensor, q: Tensor) -> Tensor:
    """``triu(X) Q`` for an upper triangular ``Q``, by 2 x 2 blocks: the product of two upper
    triangular matrices is upper triangular and its diagonal blocks are again such products, so
    the zero blocks are never multiplied (about 2.5x fewer flops than the dense product at
    2048; equal to it up to the order of the summation)."""
    m = x.shape[0]
    if m <= UPPER_PRODUCT_BLOCK:
        return torch.triu(x) @ q
    h = m // 2
    out = torch.zeros_like(q)
    out[:h, :h] = upper_product(x[:h, :h], q[:h, :h])
    out[:h, h:] = torch.triu(x[:h, :h]) @ q[:h, h:] + x[:h, h:] @ q[h:, h:]
    out[h:, h:] = upper_product(x[h:, h:], q[h:, h:])
    return out


def update_factors_(ql: Tensor, qr: Tensor, a: Tensor, b: Tensor, lr: float) -> None:
    """One EQ step on both factors, from the same ``(A, B)``; in place.

    Triangular: ``Q <- Q - lr triu(T1 - T2) Q / (lb(T1 + T2) + eps)``; diagonal:
    ``q <- q - lr (t1 - t2) q / (max|t1 + t2| + eps)``; ``lb`` is
    ``spectral_norm_lower_bound``.
    """
    terms = [_side_terms(a, b, side, q.dim() == 2) for side, q in enumerate((ql, qr))]
    for q, (t1, t2) in zip((ql, qr), terms, strict=True):
        if q.dim() == 2:
            norm = spectral_norm_lower_bound(t1 + t2) + NORMALIZER_EPS
            q.sub_(upper_product((t1 - t2).mul_(lr / norm), q))
        else:
            norm = (t1 + t2).abs().amax() + NORMALIZER_EPS
            q.sub_((t1 - t2).mul_(q).mul_(lr / norm))


def balance_(ql: Tensor, qr: Tensor) -> None:
    """Rescale the two factors to the geometric mean of their max-norms; ``P`` is unchanged
    (the scales cancel in the Kronecker product), only the dynamic range is."""
    nl, nr = ql.abs().amax(), qr.abs().amax()
    mean = (nl * nr).sqrt()
    ql.mul_(mean / nl)
    qr.mul_(mean / nr)


def precondition(ql: Tensor, qr: Tensor, g: Tensor) -> Tensor:
    """``Q_L^T Q_L G Q_R^T Q_R``."""
    x = _apply_right_t(qr, _apply_left(ql, g))
    left = ql.mT @ x if ql.dim() == 2 else ql[:, None] * x
    return left @ qr if qr.dim() == 2 else left * qr[None, :]


def procrustes_step_(q: Tensor, max_step: float = 0.125) -> None:
    """One online step of the orthogonal Procrustes problem ``min_U ||U Q - I||_F`` over
    rotations, in place: ``Q <- exp(a R) Q`` to second order with ``R = Q^T - Q`` (normalised by
    a lower bound of its norm) and ``a`` the line-search minimiser of the second-order model,
    at most ``max_step`` (psgd_torch's ``procrustes_step2``). Keeps the factor of the
    ``Q^0.5 E Q^1.5`` geometry close to symmetric positive definite."""
    r = q.mT - q
    r = r / (spectral_norm_lower_bound(r) + torch.finfo(r.dtype).smallest_normal)
    rq = r @ q
    rrq = r @ rq
    tr_rq, tr_rrq = rq.diagonal().sum(), rrq.diagonal().sum()
    a = torch.where(tr_rrq < 0, torch.clamp(-tr_rq / tr_rrq, max=max_step), max_step)
    q.add_(a * (rq + 0.5 * a * rrq))


def update_factors_procrustes_(
    ql: Tensor,
    qr: Tensor,
    lipschitz: Tensor,
    h: Tensor,
    v: Tensor,
    lr: float,
    beta: float,
    damping: float,
) -> None:
    """One ``dQ = Q^0.5 E Q^1.5`` whitening step of both factors, in place (psgd_torch's
    ``update_precond_kron_whiten_q0p5eq1p5``, the author's current default).

    With ``Pg = P (H + (damping + eps |H|) V)`` and ``T`` its Gram matrix along the factor's
    side (``Pg Pg^T`` left, ``Pg^T Pg`` right; their diagonals for a diagonal factor) and
    ``c = numel / side``: ``ell = lb(T) + c`` (diagonal: ``max T + c``), the Lipschitz estimate
    ``L <- max(beta L + (1 - beta) ell, ell)`` (``lipschitz``, one entry per side), then
    ``Q <- Q - lr (T Q - c Q) / L`` followed by one ``procrustes_step_`` (diagonal:
    ``q <- q (1 - lr (T - c) / L)``)."""
    damped = h + (damping + torch.finfo(h.dtype).eps * h.abs()) * v
    pg = precondition(ql, qr, damped)
    for side, q in enumerate((ql, qr)):
        c = h.numel() / q.shape[0]
        if q.dim() == 2:
            t = pg @ pg.mT if side == 0 else pg.mT @ pg
            ell = spectral_norm_lower_bound(t) + c
        else:
            t = (pg * pg).sum(dim=1 - side)
            ell = t.amax() + c
        ell = ell.to(lipschitz.dtype)
        lipschitz[side] = torch.maximum(beta * lipschitz[side] + (1 - beta) * ell, ell)
        step = (lr / lipschitz[side]).to(q.dtype)
        if q.dim() == 2:
            q.sub_(step * (t @ q - c * q))
            procrustes_step_(q)
        else:
            q.mul_(1 - step * (t - c))
