"""Run an inner chain in the whitened coordinates of a Kronecker-factored Fisher metric (FISMO)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_choice, check_matrix, check_positive, check_positive_int
from orthoptim._types import State
from orthoptim.functional.kron import MATMUL_DTYPES, MatmulDtype, matmul_dtype
from orthoptim.functional.kron_fisher import sym_power, update_factor_
from orthoptim.functional.moments import stats_dtype
from orthoptim.functional.polar import matrix_view
from orthoptim.transforms.base import Ctx, TransformBase
from orthoptim.transforms.chain import Chain

FactorStats = Literal["rms_normalized", "raw"]
FACTOR_STATS: tuple[str, ...] = get_args(FactorStats)


def _check_factor_beta(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"factor_beta must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"factor_beta must be in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FisherTrustRegion(TransformBase):
    r"""``u <- P^{-1/2} inner(P^{-1/2} u Q^{-1/2}) Q^{-1/2}``, factors ``F ~ P (x) Q`` from ``u``.

    The solution of ``min <G, D>`` s.t. ``||P^{1/2} D Q^{1/2}||_2 <= 1`` is
    ``-P^{-1/2} polar(P^{-1/2} G Q^{-1/2}) Q^{-1/2}``: with ``inner`` = momentum then
    orthogonalisation this is FISMO's step. Per step, alternately (``P``, then ``Q`` with the new
    ``P``): ``P <- trace-normalised(beta P + (1 - beta)(G Q^{-1} G^T / n + damping tr(P)/m I))``,
    and symmetrically ``Q`` from ``G^T P^{-1} G / m``; ``P = I``, ``Q = I`` at the start. The
    statistics are formed from the stored inverse roots, ``G Q^{-1} G^T = A A^T`` with
    ``A = G Q^{-1/2}`` and ``G^T P^{-1} G = B^T B`` with ``B = P^{-1/2} G``, whose unnormalised
    form is the whitening's first side: seven ``m x n``-by-square products per step and no
    ``P^{-1}``, ``Q^{-1}``. Inverse roots by one ``eigh`` per factor at steps that are multiples
    of ``root_every`` (1: every step, the paper's schedule, where ``Q^{-1/2}`` in ``P``'s
    statistic is the previous step's as in the paper's ``Q^{-1}``); in between the factors' EMAs
    still update every step, and statistics and whitening use the cached roots (identity before
    the first refresh). Factors and decompositions in float32 for 16-bit parameters. Matrices
    are their ``(out, in*kh*kw)`` view. ``factor_beta=1`` freezes the factors at the identity
    (``inner`` alone, no decomposition).

    State: ``P`` (m x m), ``Q`` (n x n), their inverse square roots ``P_root``, ``Q_root`` (in
    ``matmul_dtype``: they are used only as its operands), and ``inner``'s buffers under the same
    prefix.

    Args:
        inner: the chain run in whitened coordinates (FISMO: EMA momentum, then orthogonalise).
        factor_beta: EMA decay of the factors, in [0, 1].
        damping: Tikhonov term relative to the factor's mean eigenvalue, > 0.
        factor_stats: ``"raw"`` builds the statistics from ``G`` as written (their weight against
            the trace-normalised factor then grows with ``||G||^2``); ``"rms_normalized"`` from
            ``G / rms(G)``, so ``factor_beta`` and ``damping`` mean the same at every gradient
            scale.
        root_every: steps between decompositions of the factors, a positive int (Shampoo's and
            SOAP's ``precondition_every``); 1 decomposes every step as the paper.
        matmul_dtype: operand dtype of the per-step products (statistics, whitening,
            unwhitening; ``functional.kron.matmul_dtype``, as SOAP's and MKOR's):
            ``"factor"`` the factors' dtype (float32, float64 for float64 parameters);
            ``"bfloat16"`` rounds ``G``, the roots and the inner chain's output to bfloat16
            (float32 accumulation, as Muon's Newton-Schulz); ``"auto"`` bfloat16 where the
            factors are float32, theirs where float64. The factors, their EMA and ``eigh`` stay
            in the factors' dtype.
    """

    key: ClassVar[str] = "fisher"
    inner: Chain
    factor_beta: float = 0.95
    damping: float = 0.1
    factor_stats: FactorStats = "rms_normalized"
    root_every: int = 10
    matmul_dtype: MatmulDtype = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Chain):
            raise TypeError(f"inner must be a Chain, got {type(self.inner).__name__}")
        _check_factor_beta(self.factor_beta)
        check_positive("damping", self.damping)
        check_choice("factor_stats", self.factor_stats, FACTOR_STATS)
        check_positive_int("root_every", self.root_every)
        check_choice("matmul_dtype", self.matmul_dtype, MATMUL_DTYPES)

    @property
    def formula(self) -> str:  # type: ignore[override]
        return (
            r"P, Q \leftarrow \mathrm{EMA}(G Q^{-1} G^\top/n + \mu I),"
            r" \mathrm{EMA}(G^\top P^{-1} G/m + \mu I);\; u \leftarrow P^{-1/2} u Q^{-1/2};\; ["
            + self.inner.formula
            + r"];\;"
            r"u \leftarrow P^{-1/2} u Q^{-1/2}"
        )

    def validate(self, p: Tensor, name: str) -> None:
        check_matrix("FisherTrustRegion", tuple(p.shape), name)
        self.inner.validate(p, name)

    def cost(self, shape: tuple[int, ...]) -> float:
        m, n = shape[0], math.prod(shape[1:])
        # Seven m x n products with an m x m or n x n matrix per step: A = G Q^-1/2 (m n^2),
        # A A^T (m^2 n), B = P^-1/2 G (m^2 n), B^T B (m n^2), the whitening's second side (the
        # cheaper of P^-1/2 A and B Q^-1/2 between refreshes: min(m, n) m n), the unwhitening's
        # two sides (m^2 n + m n^2); per refresh eigh (~10 d^3) and the root's reconstruction
        # (2 d^3) per side.
        products = 2 * m * n * (3 * m + 3 * n + min(m, n)) if self.factor_beta < 1.0 else 0
        roots = 12 * (m**3 + n**3) / self.root_every if self.factor_beta < 1.0 else 0
        return float(products + roots) + self.inner.cost(shape)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        m, n = p.shape[0], p[0].numel()
        dtype = stats_dtype(p)
        roots = self._matmul_dtype(p)
        state = {
            "P": torch.eye(m, dtype=dtype, device=p.device),
            "Q": torch.eye(n, dtype=dtype, device=p.device),
            "P_root": torch.eye(m, dtype=roots, device=p.device),
            "Q_root": torch.eye(n, dtype=roots, device=p.device),
        }
        state.update(self.inner.init(p))
        return state

    def _matmul_dtype(self, u: Tensor) -> torch.dtype:
        return matmul_dtype(stats_dtype(u), self.matmul_dtype)

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self.apply_many([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        if self.factor_beta == 1.0:  # P = Q = I for good: the inner chain alone
            return self.inner.apply_many(us, ss, cs)
        kw = {"beta": self.factor_beta, "damping": self.damping}
        whitened = []
        for u, s, c in zip(us, ss, cs, strict=True):
            mm = self._matmul_dtype(u)
            g = matrix_view(u).to(stats_dtype(u))
            P, Q, left, right = s["P"], s["Q"], s["P_root"], s["Q_root"]
            m, n = g.shape
            # Normalised statistics divide the Gram products by rms(G)^2 (clamped, so that a
            # zero gradient gives a zero statistic, not 0/0) instead of scaling G itself.
            mean_square = None
            if self.factor_stats == "rms_normalized":
                mean_square = g.square().mean().clamp_min(torch.finfo(g.dtype).tiny)
            g_mm = g.to(mm)
            refresh = c.step % self.root_every == 0
            # G Q^-1 G^T = A A^T with A = G Q^-1/2, from the root the update is whitened with
            # (the paper's Q^-1 of the previous step when root_every = 1).
            a = g_mm @ right
            scale = n if mean_square is None else n * mean_square
            update_factor_(P, a @ a.mT, scale=scale, **kw)
            if refresh:
                left.copy_(sym_power(P, -0.5))
            # B = P^-1/2 G: the right statistic G^T P^-1 G = B^T B and the whitening's first side.
            b = left @ g_mm
            scale = m if mean_square is None else m * mean_square
            update_factor_(Q, b.mT @ b, scale=scale, **kw)
            if refresh:
                right.copy_(sym_power(Q, -0.5))
            # P^-1/2 G Q^-1/2 = P^-1/2 A where Q^-1/2 was not refreshed since A was formed, which
            # costs m^2 n instead of B Q^-1/2's m n^2: fewer FLOPs for wide matrices.
            tilde = left @ a if m < n and not refresh else b @ right
            whitened.append(tilde.to(u.dtype).reshape(u.shape))
        outs = self.inner.apply_many(whitened, ss, cs)
        return [
            (s["P_root"] @ matrix_view(o).to(s["P_root"].dtype) @ s["Q_root"])
            .to(u.dtype)
            .reshape(u.shape)
            for s, o, u in zip(ss, outs, us, strict=True)
        ]
