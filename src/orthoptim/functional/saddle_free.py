"""Saddle-free Newton in a Krylov subspace: ``|H|``-preconditioned steps from Lanczos.

Dauphin, Pascanu, Gulcehre, Cho, Ganguli, Bengio, "Identifying and attacking the saddle point
problem in high-dimensional non-convex optimization" (NeurIPS 2014, arXiv 1406.2572; the
workshop version is "On the saddle point problem for non-convex optimization", arXiv
1405.4604). Newton's step ``H^{-1} g`` moves toward a saddle along every direction of negative
curvature; the saddle-free step ``|H|^{-1} g`` (``|H| = Q |Lambda| Q^T``) keeps Newton's
rescaling of each eigendirection but always descends, so saddles repel it.

The paper's approximation (its Algorithm 1) works in the span ``V`` of ``k`` Lanczos vectors of
``H``: with ``T = V^T H V`` (tridiagonal, from the Lanczos recurrence) and damping ``lambda``,

    d = V (|T| + lambda I)^{-1} V^T g,      |T| = Q |Lambda| Q^T,  T = Q Lambda Q^T,

and the step is ``theta <- theta - d``. Started at ``g / ||g||`` the space is the Krylov space
``span{g, H g, ..., H^{k-1} g}``, which holds ``g``; with ``k = n`` (and no breakdown) ``V`` is
an orthonormal basis of the whole space and ``d = (|H| + lambda I)^{-1} g`` exactly.

Here vectors are flat (``n`` entries, the whole model's parameters); ``hvp`` maps a flat ``v``
to ``H v``. Lanczos keeps every vector (``V`` is ``k x n``: O(nk) memory) and re-orthogonalises
each new one against all before it (``reorthogonalize="full"``: two classical Gram-Schmidt
passes, O(nk^2) flops), so ``V`` stays orthonormal in float32; the paper's Lanczos has none
(``"none"``), equal in exact arithmetic. At a breakdown (``beta_j`` at rounding level: the
space is invariant) the recurrence goes on from the normalised rounding residual, a direction
orthogonal to the vectors before it (with ``"full"``), as a restart would; it is coupled to them
by ``beta_j`` only and ``g`` has no part on it, so ``d`` keeps the invariant space's exact step.
An exactly zero residual (or a zero ``start``) leaves the remaining vectors zero, which add
nothing to ``d``; that guard is a ``torch.where``, so nothing is read on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

Reorthogonalize = Literal["full", "none"]
REORTHOGONALIZE: tuple[str, ...] = ("full", "none")
Outside = Literal["drop", "gradient"]
OUTSIDE: tuple[str, ...] = ("drop", "gradient")


def lanczos(
    hvp: Callable[[Tensor], Tensor],
    start: Tensor,
    k: int,
    *,
    reorthogonalize: Reorthogonalize = "full",
) -> tuple[Tensor, Tensor, Tensor]:
    """``k`` steps of Lanczos on the symmetric operator ``hvp`` from ``start`` (flat, any
    non-zero scale; a zero ``start`` gives zero vectors): ``(V, alpha, beta)`` with ``V``
    (``k x n``, orthonormal rows in exact arithmetic), ``alpha`` (``k``, the diagonal of ``T``)
    and ``beta`` (``k - 1``, its off-diagonal). ``k`` calls of ``hvp``."""
    if reorthogonalize not in REORTHOGONALIZE:
        raise ValueError(
            f"reorthogonalize must be one of {REORTHOGONALIZE}, got {reorthogonalize!r}"
        )
    n = start.numel()
    if k < 1 or k > n:
        raise ValueError(f"k must be in [1, n] = [1, {n}], got {k}")
    tiny = torch.finfo(start.dtype).tiny
    vs = start.new_zeros(k, n)
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    vs[0] = _unit(start, tiny)
    for j in range(k):
        w = hvp(vs[j]).reshape(-1)
        alpha = torch.dot(vs[j], w)
        alphas.append(alpha)
        if j == k - 1:
            break
        w = w - alpha * vs[j]
        if j > 0:
            w = w - betas[-1] * vs[j - 1]
        if reorthogonalize == "full":
            basis = vs[: j + 1]
            for _ in range(2):  # "twice is enough" (Kahan, Parlett) for float32
                w = w - basis.mT @ (basis @ w)
        beta = torch.linalg.vector_norm(w)
        betas.append(beta)
        vs[j + 1] = torch.where(beta > tiny, w / beta.clamp_min(tiny), torch.zeros_like(w))
    alpha_t = torch.stack(alphas)
    beta_t = torch.stack(betas) if betas else alpha_t.new_zeros(0)
    return vs, alpha_t, beta_t


def _unit(x: Tensor, tiny: float) -> Tensor:
    """``x / ||x||`` (zero for a zero ``x``), the norm taken on ``x / max|x|`` so that a
    gradient whose squares overflow still gives a unit vector."""
    peak = x.abs().amax()
    scaled = x / peak.clamp_min(tiny)
    norm = torch.linalg.vector_norm(scaled)
    return torch.where(norm > 0, scaled / norm.clamp_min(tiny), torch.zeros_like(x))


def tridiagonal(alpha: Tensor, beta: Tensor) -> Tensor:
    """The symmetric tridiagonal ``T`` with diagonal ``alpha`` and off-diagonal ``beta``."""
    return torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)


def absolute_inverse_coefficients(
    alpha: Tensor, beta: Tensor, c: Tensor, dampings: Sequence[float] | Tensor
) -> Tensor:
    """``(|T| + lambda I)^{-1} c`` for each ``lambda`` of ``dampings``: a ``k x m`` matrix (one
    column per damping), in float64. A zero ``|lambda_i| + lambda`` (only with no damping)
    contributes nothing (a pseudo-inverse), so a breakdown's zero block gives no NaN. A ``T``
    with a NaN or Inf (a product that overflowed) gives NaN coefficients, for the optimizer's
    non-finite check to refuse, instead of an error from the eigensolver."""
    t = tridiagonal(alpha.double(), beta.double())
    finite = torch.isfinite(t).all()
    t = torch.where(finite, t, 0.0)
    peak = t.abs().amax().clamp_min(torch.finfo(torch.float64).tiny)
    evals, q = torch.linalg.eigh(t / peak)  # scaled: the solver's tolerances are relative
    lam = torch.as_tensor(dampings, dtype=torch.float64, device=t.device).reshape(1, -1)
    denom = (evals * peak).abs().reshape(-1, 1) + lam
    scale = torch.where(denom > 0, 1.0 / torch.where(denom > 0, denom, 1.0), 0.0)
    coefficients = q @ (scale * (q.mT @ c.double()).reshape(-1, 1))
    return torch.where(finite, coefficients, torch.nan)


def saddle_free_direction(
    vs: Tensor,
    alpha: Tensor,
    beta: Tensor,
    g: Tensor,
    damping: float,
    *,
    outside: Outside = "drop",
) -> Tensor:
    """``d = V (|T| + damping I)^{-1} V^T g`` (flat, ``g``'s dtype), plus with
    ``outside="gradient"`` the part of ``g`` outside the span of ``V``, ``g - V^T V g``, as it
    is (a gradient step there). Started from ``g`` the space holds ``g``, so the two agree."""
    if outside not in OUTSIDE:
        raise ValueError(f"outside must be one of {OUTSIDE}, got {outside!r}")
    c = vs @ g
    y = absolute_inverse_coefficients(alpha, beta, c, [damping])[:, 0]
    d = vs.mT @ y.to(vs.dtype)
    if outside == "gradient":
        d = d + (g - vs.mT @ c)
    return d


def candidate_directions(
    vs: Tensor,
    alpha: Tensor,
    beta: Tensor,
    g: Tensor,
    dampings: Sequence[float],
    *,
    outside: Outside = "drop",
) -> tuple[Tensor, Tensor]:
    """The subspace coefficients of every damping's direction, ``Y = (|T| + lambda_j I)^{-1}
    V^T g`` (``k x m``, float64), and the outside part (zero with ``outside="drop"``): the
    direction of damping ``j`` is ``V^T Y[:, j] + outside``, formed only for the one kept."""
    if outside not in OUTSIDE:
        raise ValueError(f"outside must be one of {OUTSIDE}, got {outside!r}")
    c = vs @ g
    ys = absolute_inverse_coefficients(alpha, beta, c, dampings)
    rest = (g - vs.mT @ c) if outside == "gradient" else torch.zeros_like(g)
    return ys, rest
