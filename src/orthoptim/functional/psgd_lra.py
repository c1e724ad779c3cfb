"""PSGD's low-rank approximation (LRA) preconditioner fitted on a Lie group (arXiv 2402.11858).

Over a flattened block of ``N`` parameters, ``Q = (I + U V^T) diag(d)`` with ``U, V`` (N x r)
and ``d`` (N) positive, and ``P = Q^T Q``. The matrices ``I + U V^T`` (``V^T U`` not -1 in any
eigenvalue) form a group, so ``Q`` moves on a connected Lie group, as the Kronecker factors do
(``functional.psgd``). The whitening criterion is again ``E[h^T P h + v^T P^{-1} v]`` (``h`` a
gradient, ``v ~ N(0, I)`` a probe; or ``(h, v)`` a gradient difference and its parameter
difference), minimised where ``P E[h h^T] P = E[v v^T]``.

With ``a = Q h``, ``b = Q^{-T} v``, ``Ph = P h`` and ``P^{-1} v``:

- ``d``: the relative gradient is ``nabla_d = Ph * h - v * P^{-1}v`` (element-wise), and
  ``d <- d - mu d * nabla_d``;
- ``U`` (``dQ = dU V^T Q'``): ``nabla_U = (a a^T - b b^T) V (I + V^T U)``, ``U <- U - mu nabla_U``;
- ``V``: ``nabla_V = (a + V U^T a) a^T U - (b + V U^T b) b^T U``, ``V <- V - mu nabla_V``;

one of ``U`` or ``V`` per update (the other fixed: each step is then exact on its
subgroup). ``Q^{-T}`` and ``P^{-1}`` come from the Woodbury identity with the r x r matrix
``I + V^T U`` (one LU factorisation). The step size ``mu`` is ``lr`` over a normaliser,
the reference's ``step_normalizer``: ``"2nd"`` bounds the criterion's second derivative along the
step, ``"1st"`` is the norm of the gradient.

A block is a list of pieces (a parameter's rows of ``U``, ``V``, its entries of ``d``, ``h``,
``v``): every product over ``N`` is a sum of the pieces' products, so one parameter
(``blocks="parameter"``) and the whole model (``blocks="model"``, the reference's) run the same
code. Nothing here reads a device value on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _sum(xs: Sequence[Tensor]) -> Tensor:
    """The sum of the pieces' partial results (scalars or r x r matrices)."""
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def _dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """``x^T y`` over the block."""
    return _sum([torch.sum(x * y) for x, y in zip(xs, ys, strict=True)])


def _row(xs: Sequence[Tensor], ms: Sequence[Tensor]) -> Tensor:
    """``x^T M`` (length r) over the block."""
    return _sum([x @ m for x, m in zip(xs, ms, strict=True)])


def _gram(ms: Sequence[Tensor], ns: Sequence[Tensor]) -> Tensor:
    """``M^T N`` (r x r) over the block."""
    return _sum([m.mT @ n for m, n in zip(ms, ns, strict=True)])


def _ip_uvt(us: Sequence[Tensor], vs: Sequence[Tensor], xs: Sequence[Tensor]) -> list[Tensor]:
    """``(I + U V^T) x``."""
    c = _row(xs, vs)
    return [x + u @ c for x, u in zip(xs, us, strict=True)]


def precondition(
    us: Sequence[Tensor], vs: Sequence[Tensor], ds: Sequence[Tensor], gs: Sequence[Tensor]
) -> list[Tensor]:
    """``P g = d * (I + V U^T)(I + U V^T)(d * g)``, piece by piece."""
    qg = _ip_uvt(us, vs, [d * g for d, g in zip(ds, gs, strict=True)])
    return [d * x for d, x in zip(ds, _ip_uvt(vs, us, qg), strict=True)]


def init_scale(hs: Sequence[Tensor], vs: Sequence[Tensor] | None) -> Tensor:
    """The reference's scale of ``d`` at the first fit when none is given:
    ``(v^T v / h^T h)^(1/4)``, with ``v^T v = N`` for a probe (``vs`` ``None``), so that
    ``P h`` and ``v`` start at one size; 1 where ``h`` is zero."""
    hh = _dot(hs, hs)
    vv = _dot(vs, vs) if vs is not None else torch.full_like(hh, sum(h.numel() for h in hs))
    ok = (hh > 0) & (vv > 0)
    return torch.where(ok, vv / torch.where(ok, hh, torch.ones_like(hh)), 1.0) ** 0.25


def balance_(us: Sequence[Tensor], vs: Sequence[Tensor]) -> None:
    """``U / rho, V * rho`` with ``rho = sqrt(||U|| / ||V||)``: ``U V^T`` unchanged, their
    dynamic ranges equal. A zero ``U`` or ``V`` is left as it is."""
    nu, nv = _dot(us, us).sqrt(), _dot(vs, vs).sqrt()
    ok = (nu > 0) & (nv > 0)
    rho = torch.where(ok, nu / torch.where(ok, nv, torch.ones_like(nv)), 1.0).sqrt()
    for u, v in zip(us, vs, strict=True):
        u.div_(rho)
        v.mul_(rho)


def update_(
    us: Sequence[Tensor],
    vs: Sequence[Tensor],
    ds: Sequence[Tensor],
    hs: Sequence[Tensor],
    probes: Sequence[Tensor],
    lr: float,
    normalizer: str,
    update_u: bool,
) -> None:
    """One Lie-group step of ``d`` and then of ``U`` (``update_u``) or ``V``, in place, on the
    pair ``(h, v)`` (``probes``: the ``v`` pieces). ``normalizer``: ``"2nd"`` or ``"1st"``
    (module docstring). ``a``, ``b`` and ``I + V^T U`` are those of the ``Q`` before the
    step of ``d``, as the reference's."""
    dtype = ds[0].dtype
    tiny = torch.finfo(dtype).tiny
    ip_vtu = torch.eye(us[0].shape[1], dtype=dtype, device=ds[0].device) + _gram(vs, us)
    lu, pivots, _ = torch.linalg.lu_factor_ex(ip_vtu)
    a = _ip_uvt(us, vs, [d * h for d, h in zip(ds, hs, strict=True)])
    ph = [d * x for d, x in zip(ds, _ip_uvt(vs, us, a), strict=True)]
    # Woodbury: (I + V U^T)^{-1} x = x - V (I + U^T V)^{-1} U^T x, and (I + U V^T)^{-1} alike.
    vd = [v / d for v, d in zip(probes, ds, strict=True)]
    y = torch.linalg.lu_solve(lu, pivots, _row(vd, us)[:, None], adjoint=True)[:, 0]
    b = [x - v @ y for x, v in zip(vd, vs, strict=True)]
    z = torch.linalg.lu_solve(lu, pivots, _row(b, vs)[:, None])[:, 0]
    inv_pv = [(x - u @ z) / d for x, u, d in zip(b, us, ds, strict=True)]

    nabla_d = [p * h - v * w for p, h, v, w in zip(ph, hs, probes, inv_pv, strict=True)]
    if normalizer == "2nd":
        bound = torch.stack(
            [
                (torch.rsqrt(p * p + v * v + tiny) * torch.rsqrt(h * h + w * w + tiny)).amin()
                for p, h, v, w in zip(ph, hs, probes, inv_pv, strict=True)
            ]
        ).amin()
        mu_d = lr * bound
    else:
        mu_d = lr / (torch.stack([x.abs().amax() for x in nabla_d]).amax() + tiny)
    for d, g in zip(ds, nabla_d, strict=True):
        d.sub_(mu_d * d * g)

    fixed = vs if update_u else us
    # a and b side by side (N x 2): each pass over U or V below serves both.
    ab = [torch.stack([x, y], dim=1) for x, y in zip(a, b, strict=True)]
    rows = _gram(ab, fixed)  # [a^T V; b^T V] (or with U), 2 x r
    f = [m @ rows.mT for m in fixed]  # [V V^T a, V V^T b]: the step's rank-one parts
    gab, gf = _gram(ab, ab), _gram(f, f)
    if normalizer == "2nd":
        norm = gab[0, 0].sqrt() * gf[0, 0].sqrt() + gab[1, 1].sqrt() * gf[1, 1].sqrt()
    else:
        # ||a (V V^T a)^T - b (V V^T b)^T||_F.
        norm = (gab[0, 0] * gf[0, 0] + gab[1, 1] * gf[1, 1] - 2 * gab[0, 1] * gf[0, 1]).abs()
        norm = norm.sqrt()
    mu = lr / (norm + tiny)
    signed = torch.stack([rows[0], -rows[1]]) * -mu  # -mu [a^T V; -b^T V]
    if update_u:
        signed = signed @ ip_vtu
        for u, x in zip(us, ab, strict=True):
            u.addmm_(x, signed)
    else:
        for v, x in zip(vs, ab, strict=True):
            v.addmm_(x + v @ rows.mT, signed)


def dense_q(us: Sequence[Tensor], vs: Sequence[Tensor], ds: Sequence[Tensor]) -> Tensor:
    """``Q = (I + U V^T) diag(d)`` as a dense N x N matrix (tests and small blocks only)."""
    u, v, d = torch.cat(list(us)), torch.cat(list(vs)), torch.cat(list(ds))
    eye = torch.eye(d.numel(), dtype=d.dtype, device=d.device)
    return (eye + u @ v.mT) * d[None, :]
