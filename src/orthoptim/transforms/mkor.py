"""MKOR: Kronecker factors of layer inputs and output gradients, inverted by rank-1 updates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_positive, check_positive_int
from orthoptim._types import State
from orthoptim.functional.kron import MATMUL_DTYPES, MatmulDtype, matmul_dtype
from orthoptim.functional.moments import stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase
from orthoptim.transforms.capture import ActivationCapture

InverseUpdate = Literal["paper", "package"]
INVERSE_UPDATES: tuple[str, ...] = get_args(InverseUpdate)


def sherman_morrison_(
    inv: Tensor, v: Tensor, beta: float, rule: str, *, keep: Tensor | None = None
) -> Tensor:
    """One rank-1 update of the symmetric inverse factor ``inv`` in place, sync-free.

    ``"paper"``: ``inv <- (beta F + (1-beta) v v^T)^-1`` for ``F = inv^-1`` (momentum on the
    factor). ``"package"``: ``Q = beta inv + (1-beta) I``, ``inv <- (Q^-1 + v v^T)^-1`` (the
    reference package's code, with its fixed 0.95 as ``beta``). A factor that goes bad (a
    non-positive or non-finite denominator, or a non-finite entry) restarts from the identity.
    Where the 0-d bool ``keep`` holds, ``inv`` is left as it is (selected on the device:
    MKOR-H's switch).
    """
    return update_factor_(inv, v, beta, rule, keep=keep)


def update_factor_(
    inv: Tensor,
    v: Tensor,
    beta: float,
    rule: str,
    *,
    keep: Tensor | None = None,
    stabilize_above: float = math.inf,
    stabilization: float = 0.0,
) -> Tensor:
    """``sherman_morrison_`` followed by MKOR's stabiliser, in place and sync-free: if an entry
    of the updated factor exceeds ``stabilize_above`` in absolute value, ``inv <- (1 -
    stabilization) inv + stabilization I``.

    Both rules are written as ``inv <- s (inv - z z^T + h I)`` (paper: ``z = w sqrt(c)``,
    ``w = inv v``, ``c = k / (1 + k v^T w)``, ``k = (1-beta)/beta``, ``s = 1/beta``, ``h = 0``;
    package: ``w = Q v`` without forming ``Q``, ``z = w / sqrt(beta (1 + v^T w))``,
    ``s = beta``, ``h = (1-beta)/beta``), so that a step makes six passes over the d x d factor
    (``inv v``, ``z z^T``, the subtraction in place, the finiteness test, the restart's
    selection, and one rescale that applies ``s`` and the stabiliser together) where the
    formulas' operations one by one made fifteen, and holds one d x d temporary. Equal to them
    to round-off (``tests/recipes/test_mkor.py``).
    """
    # Exact symmetry is kept without a symmetrisation pass: z_i z_j is the same product as
    # z_j z_i, and a subtraction, a scalar product and a diagonal add keep it. Fused kernels
    # would not (addr_ and add(alpha=) use an FMA in their vector loop only, so tail columns
    # round differently and the factor drifts from symmetry), hence the outer product.
    dtype, device = inv.dtype, inv.device
    scale: float | Tensor  # a tensor where ``keep`` holds some factors as they are
    if rule == "paper":
        k = (1.0 - beta) / beta
        w = inv @ v
        den = 1.0 + k * (v @ w)
        z = w.mul_(torch.sqrt(k / den))
        scale, shift = 1.0 / beta, 0.0
    else:
        w = (inv @ v).mul_(beta).add_(v, alpha=1.0 - beta)  # Q v
        den = 1.0 + v @ w
        z = w.mul_(torch.rsqrt(den * beta))
        scale, shift = beta, (1.0 - beta) / beta
    if keep is not None:
        z.masked_fill_(keep, 0.0)  # inv - 0 is inv bit for bit
    inv.sub_(torch.outer(z, z))
    if shift:
        inv.diagonal().add_(
            shift
            if keep is None
            else torch.full((), shift, dtype=dtype, device=device).masked_fill_(keep, 0.0)
        )
    low, high = torch.aminmax(inv)
    peak = torch.maximum(high, low.neg())  # NaN or inf exactly when an entry is not finite
    ok = peak.isfinite() & (den > 0) & den.isfinite()
    # s > 0 scales every entry monotonically: s * peak is the largest |entry| of the update
    big = ok & (peak * scale > stabilize_above)
    if keep is not None:
        ok, big = ok | keep, big & ~keep
    blend = big.to(dtype) * stabilization
    if keep is not None:
        scale = torch.full((), scale, dtype=dtype, device=device).masked_fill_(keep, 1.0)
    # a bad factor: every entry to 0 (where, not a product: 0 * inf is NaN), then I on the diagonal
    torch.where(ok, inv, inv.new_zeros(()), out=inv)
    inv.mul_(ok.to(dtype) * (1.0 - blend) * scale)
    inv.diagonal().add_(blend + (~ok).to(dtype))
    return inv


@dataclass(frozen=True, slots=True, kw_only=True)
class MKORPrecondition(TransformBase):
    r"""``u <- (||G|| / ||L^-1 G R^-1||) L^-1 G R^-1`` with inverse factors updated every step.

    ``G`` is the update as an ``(out, in*kh*kw)`` matrix. From the capture's batch-mean layer
    input ``a`` and summed output gradient ``g`` (each clamped to ``[-stats_clip, stats_clip]``):
    ``R^-1 <- SM(R^-1, a)``, ``L^-1 <- SM(L^-1, g)`` (``sherman_morrison_``; factors start at
    ``I``). Norm-based stabiliser: a factor with an entry above ``stabilize_above`` in absolute
    value is pulled to ``(1 - stabilization) F^-1 + stabilization I``. The step is rescaled to the
    gradient's Frobenius norm; if that fails (zero or non-finite norm) ``u`` passes unchanged. A
    step without captured statistics (hooks missed, no backward, unattached capture) keeps the
    factors as they are and preconditions with them. ``matmul_dtype="auto"`` (default;
    ``functional.kron.matmul_dtype``, as SOAP's and FISMO's) computes the two products from
    bfloat16 copies of ``L^-1``, ``G``, ``R^-1`` where the factors are float32 (the factors
    themselves and their updates stay in their dtype; the rescale's norms in it too), as Muon's
    Newton-Schulz does; ``"factor"`` computes them in the factors' dtype (the paper's
    arithmetic), ``"bfloat16"`` always in bfloat16. The default is bfloat16 because its final
    losses are within 1% of the ``"factor"`` path's on the convergence problems
    (``tests/recipes/test_mkor.py``, measured
    at most 0.2%), and the products are most of the step's work.

    State: ``L_inv`` (out x out), ``R_inv`` (in x in), float32 for 16-bit parameters.
    """

    key: ClassVar[str] = "mkor"
    formula: ClassVar[str] = (
        r"L^{-1}, R^{-1} \leftarrow \mathrm{SM}(\cdot, g), \mathrm{SM}(\cdot, a);\;"
        r"u \leftarrow \tfrac{\|G\|}{\|L^{-1} G R^{-1}\|} L^{-1} G R^{-1}"
    )
    factor_beta: float = 0.95
    stabilization: float = 0.1
    stabilize_above: float = 2.0
    stats_clip: float = 100.0
    inverse_update: InverseUpdate = "paper"
    matmul_dtype: MatmulDtype = "auto"
    capture: ActivationCapture = field(default_factory=ActivationCapture, repr=False, compare=False)

    @property
    def needs_module(self) -> bool:
        return True

    def __post_init__(self) -> None:
        check_beta("factor_beta", self.factor_beta)
        if self.factor_beta == 0:
            raise ValueError("factor_beta must be in (0, 1), got 0")
        check_positive("stabilization", self.stabilization)
        if self.stabilization > 1:
            raise ValueError(f"stabilization must be in (0, 1], got {self.stabilization!r}")
        check_positive("stabilize_above", self.stabilize_above)
        check_positive("stats_clip", self.stats_clip)
        check_choice("inverse_update", self.inverse_update, INVERSE_UPDATES)
        check_choice("matmul_dtype", self.matmul_dtype, MATMUL_DTYPES)

    def validate(self, p: Tensor, name: str) -> None:
        if p.ndim < 2:
            raise ValueError(f"MKOR preconditions matrices; {name or 'a parameter'} is {p.ndim}-D")

    def init(self, p: Tensor) -> dict[str, Tensor]:
        rows, cols = p.shape[0], p.numel() // max(p.shape[0], 1)
        dtype, device = stats_dtype(p), p.device
        return {
            "L_inv": torch.eye(rows, dtype=dtype, device=device),
            "R_inv": torch.eye(cols, dtype=dtype, device=device),
        }

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return u.copy_(self.direction(u, s, c).view_as(u))  # no copy where it is u's memory

    def direction(self, u: Tensor, s: State, c: Ctx, keep: Tensor | None = None) -> Tensor:
        """The preconditioned ``(out, in*kh*kw)`` matrix, in the factors' dtype, written over
        ``u`` where ``u`` is a view of it (``u`` is the chain's working copy); where the 0-d
        bool ``keep`` holds, the factors are not updated and the result is ``u`` unchanged
        (selected on the device, so nothing waits for the host)."""
        left, right = s["L_inv"], s["R_inv"]
        stats = self.capture.take(c.parameter)
        if stats is not None and (stats[0].numel(), stats[1].numel()) == (
            right.shape[0],
            left.shape[0],
        ):
            for inv, v in zip((right, left), stats, strict=True):
                update_factor_(
                    inv,
                    v.to(inv.dtype).clamp(-self.stats_clip, self.stats_clip),
                    self.factor_beta,
                    self.inverse_update,
                    keep=keep,
                    stabilize_above=self.stabilize_above,
                    stabilization=self.stabilization,
                )
        g = u.reshape(u.shape[0], -1).to(left.dtype)
        narrow = matmul_dtype(left.dtype, self.matmul_dtype)
        if narrow != left.dtype:  # the factors stay in their dtype; copies feed the products
            out = (left.to(narrow) @ g.to(narrow) @ right.to(narrow)).to(left.dtype)
        else:
            out = left @ g @ right
        out_norm = torch.linalg.vector_norm(out)
        scale = torch.linalg.vector_norm(g) / out_norm  # inf or nan when it cannot be trusted
        use = torch.isfinite(out_norm) & torch.isfinite(scale)
        if keep is not None:
            use = use & ~keep
        # into g, which is u's own memory where the reshape is a view: apply's copy is then none
        return torch.where(use, out.mul_(scale), g, out=g)

    def cost(self, shape: tuple[int, ...]) -> float:
        rows, cols = shape[0], math.prod(shape[1:])
        # two products, two Sherman-Morrison updates (~6 d^2 each with the checks), the rescale
        return 2.0 * rows * cols * (rows + cols) + 6.0 * (rows**2 + cols**2) + 4.0 * rows * cols


@dataclass(frozen=True, slots=True, kw_only=True)
class MKORHybridPrecondition(TransformBase):
    r"""MKOR-H: ``MKORPrecondition`` until its steps stop reducing the loss, then first order.

    Switching rule (per parameter, one way): the loss decrease due to this parameter's last
    step is estimated from gradients alone by the trapezoid rule,
    ``d_t = -<(g_{t-1} + g_t) / 2, theta_t - theta_{t-1}>`` (exact for a quadratic loss);
    ``r_t = switch_beta r_{t-1} + (1 - switch_beta) d_t`` and ``peak_t = max(peak_{t-1}, r_t)``.
    At the first step ``t >= switch_warmup`` with ``r_t < switch_ratio * peak_t`` the parameter
    switches for good: its factors are no longer updated and ``u`` passes unchanged, so the rest
    of the chain (momentum SGD) is the first-order optimizer, at the same lr, because MKOR's steps
    already have the gradient's norm.

    The switch is selected on the device (``torch.where``), never read by the host: after it,
    MKOR's factor updates and products still run and their results are discarded. That is the
    trade: a step after the switch costs what one before it did, and no step waits for the
    device (reading the flag to skip the work was one host read per parameter and step).

    State: ``inner`` MKOR's, plus ``prev_param``, ``prev_grad`` (stats dtype), ``rate``,
    ``peak``, ``switched`` (scalars).
    """

    key: ClassVar[str] = "mkor_h"
    formula: ClassVar[str] = (
        r"\text{MKOR until } \mathrm{ema}(-\langle \bar g, \Delta\theta \rangle) < "
        r"\rho \max \mathrm{ema}(\cdot) \text{, then } u \leftarrow u"
    )
    inner: MKORPrecondition
    switch_warmup: int = 100
    switch_ratio: float = 0.1
    switch_beta: float = 0.9

    def __post_init__(self) -> None:
        check_positive_int("switch_warmup", self.switch_warmup)
        check_beta("switch_beta", self.switch_beta)
        check_beta("switch_ratio", self.switch_ratio)

    @property
    def capture(self) -> ActivationCapture:
        return self.inner.capture

    @property
    def needs_module(self) -> bool:
        return True

    def validate(self, p: Tensor, name: str) -> None:
        self.inner.validate(p, name)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dt = stats_dtype(p)
        return {
            **self.inner.init(p),
            "prev_param": p.detach().to(dt, copy=True),
            "prev_grad": torch.zeros_like(p, dtype=dt),
            "rate": torch.zeros((), dtype=torch.float32, device=p.device),
            "peak": torch.zeros((), dtype=torch.float32, device=p.device),
            "switched": torch.zeros((), dtype=torch.float32, device=p.device),
        }

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        param, grad = c.param.detach(), c.grad.detach()
        prev_param, prev_grad = s["prev_param"], s["prev_grad"]
        if c.step > 1:
            # In place: both buffers are overwritten with this step's values below.
            # -<g_{t-1} + g_t, theta_t - theta_{t-1}> = <g_{t-1} + g_t, theta_{t-1} - theta_t>
            back = prev_param.sub_(param)
            both = prev_grad.add_(grad)
            total = torch.dot(both.reshape(-1), back.reshape(-1))
            decrease = torch.nan_to_num(0.5 * total.float(), 0.0)
            rate = s["rate"].mul_(self.switch_beta).add_(decrease * (1 - self.switch_beta))
            torch.maximum(s["peak"], rate, out=s["peak"])
            if c.step >= self.switch_warmup:
                s["switched"].copy_(s["switched"].logical_or(rate < self.switch_ratio * s["peak"]))
        prev_param.copy_(param)
        prev_grad.copy_(grad)
        out = self.inner.direction(u, s, c, keep=s["switched"].bool())  # switched: u as it is
        return u.copy_(out.view_as(u))  # no copy where out is u's memory

    def cost(self, shape: tuple[int, ...]) -> float:
        return self.inner.cost(shape) + 8.0 * math.prod(shape)
