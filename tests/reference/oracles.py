"""Independent naive oracles written from the published algorithms; they import nothing from
orthoptim.

``keller_muon``: the update of KellerJordan/Muon (``muon.py``: ``zeropower_via_newtonschulz5``
and ``muon_update``; Keller Jordan, "Muon: An optimizer for hidden layers in neural networks",
2024), written as plain loops:

    M_t = beta M_{t-1} + (1 - beta) G_t
    U_t = (1 - beta) G_t + beta M_t      (Nesterov)   or   M_t
    O_t = NS5(U_t): X = U/(||U||_F + 1e-7) (transposed when tall),
          5 x [A = X X^T; X = 3.4445 X - 4.7750 A X + 2.0315 A A X]
    W_t = W_{t-1} (1 - lr wd) - lr sqrt(max(1, rows/cols)) O_t

The products are separate (no fused ``addmm``), in the dtype asked for.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KELLER = (3.4445, -4.7750, 2.0315)


def keller_newton_schulz5(
    G: Tensor, dtype: torch.dtype, steps: int = 5, eps: float = 1e-7
) -> Tensor:
    a, b, c = KELLER
    X = G.to(dtype)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A) @ X + (c * (A @ A)) @ X
    return X.T if tall else X


class KellerMuon:
    """One matrix parameter updated by the naive Keller Muon rule."""

    def __init__(
        self,
        p: Tensor,
        *,
        lr: float,
        weight_decay: float,
        beta: float,
        nesterov: bool,
        ns_dtype: torch.dtype,
    ) -> None:
        self.p = p.clone()
        self.m = torch.zeros_like(p)
        self.lr, self.wd, self.beta, self.nesterov, self.ns_dtype = (
            lr,
            weight_decay,
            beta,
            nesterov,
            ns_dtype,
        )

    def step(self, g: Tensor) -> Tensor:
        self.m = self.beta * self.m + (1 - self.beta) * g
        u = (1 - self.beta) * g + self.beta * self.m if self.nesterov else self.m
        rows, cols = u.shape[0], u[0].numel()
        o = keller_newton_schulz5(u.reshape(rows, cols), self.ns_dtype).to(self.p.dtype)
        scale = math.sqrt(max(1.0, rows / cols))
        self.p = self.p * (1 - self.lr * self.wd) - self.lr * scale * o.reshape(self.p.shape)
        return self.p
