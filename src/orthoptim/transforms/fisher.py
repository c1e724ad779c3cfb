"""Run an inner chain in the whitened coordinates of a Kronecker-factored Fisher metric (FISMO)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_choice, check_matrix, check_positive
from orthoptim._types import State
from orthoptim.functional.kron_fisher import sym_powers, update_factor_
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
    and symmetrically ``Q`` from ``G^T P^{-1} G / m``; ``P = I``, ``Q = I`` at the start. Inverse
    roots by ``eigh`` every step, in float32 for 16-bit parameters: two per step, one of each
    new factor (``P^{-1}`` and ``P^{-1/2}`` from one, ``Q^{-1/2}`` and next step's ``Q^{-1}``
    from the other). Matrices are their ``(out, in*kh*kw)`` view. ``factor_beta=1`` freezes the
    factors at the identity (``inner`` alone, no decomposition).

    State: ``P`` (m x m), ``Q`` (n x n), ``Q_inv`` (``Q^{-1}``, n x n, kept so that ``Q`` is
    decomposed once per value), and ``inner``'s buffers under the same prefix.

    Args:
        inner: the chain run in whitened coordinates (FISMO: EMA momentum, then orthogonalise).
        factor_beta: EMA decay of the factors, in [0, 1].
        damping: Tikhonov term relative to the factor's mean eigenvalue, > 0.
        factor_stats: ``"raw"`` builds the statistics from ``G`` as written (their weight against
            the trace-normalised factor then grows with ``||G||^2``); ``"rms_normalized"`` from
            ``G / rms(G)``, so ``factor_beta`` and ``damping`` mean the same at every gradient
            scale.
    """

    key: ClassVar[str] = "fisher"
    inner: Chain
    factor_beta: float = 0.95
    damping: float = 0.1
    factor_stats: FactorStats = "rms_normalized"

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Chain):
            raise TypeError(f"inner must be a Chain, got {type(self.inner).__name__}")
        _check_factor_beta(self.factor_beta)
        check_positive("damping", self.damping)
        check_choice("factor_stats", self.factor_stats, FACTOR_STATS)

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

    def init(self, p: Tensor) -> dict[str, Tensor]:
        m, n = p.shape[0], p[0].numel()
        dtype = stats_dtype(p)
        state = {
            "P": torch.eye(m, dtype=dtype, device=p.device),
            "Q": torch.eye(n, dtype=dtype, device=p.device),
            "Q_inv": torch.eye(n, dtype=dtype, device=p.device),
        }
        state.update(self.inner.init(p))
        return state

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self.apply_many([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        if self.factor_beta == 1.0:  # P = Q = I for good: the inner chain alone
            return self.inner.apply_many(us, ss, cs)
        roots, whitened = [], []
        for u, s in zip(us, ss, strict=True):
            g = matrix_view(u).to(stats_dtype(u))
            P, Q = s["P"], s["Q"]
            m, n = g.shape
            stat = g
            if self.factor_stats == "rms_normalized":
                rms = torch.linalg.vector_norm(g) / (m * n) ** 0.5
                stat = g / rms.clamp_min(torch.finfo(g.dtype).tiny)
            kw = {"beta": self.factor_beta, "damping": self.damping}
            update_factor_(P, stat, s["Q_inv"], scale=n, **kw)
            p_inv, left = sym_powers(P, (-1.0, -0.5))
            update_factor_(Q, stat.mT, p_inv, scale=m, **kw)
            q_inv, right = sym_powers(Q, (-1.0, -0.5))
            s["Q_inv"].copy_(q_inv)
            roots.append((left, right))
            whitened.append((left @ g @ right).to(u.dtype).reshape(u.shape))
        outs = self.inner.apply_many(whitened, ss, cs)
        return [
            (left @ matrix_view(o).to(left.dtype) @ right).to(u.dtype).reshape(u.shape)
            for (left, right), o, u in zip(roots, outs, us, strict=True)
        ]
