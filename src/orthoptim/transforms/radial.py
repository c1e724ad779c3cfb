"""AdamP / SGDP: remove the radial component of the update on scale-invariant weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from orthoptim._checks import check_beta, check_positive
from orthoptim._types import State
from orthoptim.functional import multi_tensor
from orthoptim.functional.moments import stats_dtype
from orthoptim.transforms.base import Ctx, TransformBase


def _check_unit_interval(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectRadial(TransformBase):
    r"""AdamP's projection (Heo et al., arXiv 2006.08217) and its weight decay.

    For a parameter ``theta`` with ``ndim >= 2``, views are tried in order: channel-wise (one row
    per output channel, ``theta.view(out, -1)``), then layer-wise (one row). A view is deemed
    scale-invariant when ``max_rows |cos(g_row, theta_row)| < delta / sqrt(row length)``; for the
    first such view ``u <- u - theta_n <theta_n, u>_row`` with ``theta_n = theta_row /
    (||theta_row|| + eps)``, and the decay ratio is ``r = wd_ratio`` (otherwise ``u`` is kept and
    ``r = 1``). Vectors are never projected. Then ``u <- u + lambda decay_scale r theta``
    (decoupled decay once the shell multiplies by the lr): the decay lives here because its ratio
    depends on the detection. SGDP uses ``decay_scale = 1 / (1 - momentum)`` (clovaai/AdamP).

    With ``buffer_momentum = mu > 0`` the transform keeps a heavy-ball buffer and projects it in
    place, ``m <- P(mu m + u)``, ``u <- m``: clovaai/AdamP's SGDP without Nesterov, whose update
    *is* its buffer (pytorch-optimizer clones it first; use ``Momentum`` before this for that).

    The cosine is ``torch.nn.functional.cosine_similarity`` with ``eps``, as in clovaai/AdamP; for
    16-bit parameters everything is computed in float32.

    State: ``m`` (parameter dtype) when ``buffer_momentum > 0``, else none.

    Args:
        delta: cosine threshold (scaled by ``1 / sqrt(row length)``), > 0.
        wd_ratio: decay ratio on projected parameters, in [0, 1].
        eps: guard of the cosine and of the row norms, > 0.
        decay_scale: extra factor on the decay, > 0.
        buffer_momentum: the projected buffer's coefficient ``mu`` in [0, 1); 0: no buffer.
    """

    key: ClassVar[str] = "projection"
    capturable: ClassVar[bool] = True  # both views selected on the device; the step unused
    formula: ClassVar[str] = (
        r"u \leftarrow \text{scale-inv}\ ?\ u - \hat\theta\langle\hat\theta, u\rangle : u;\;"
        r"u \leftarrow u + \lambda\, s\, r\, \theta"
    )
    delta: float = 0.1
    wd_ratio: float = 0.1
    eps: float = 1e-8
    decay_scale: float = 1.0
    buffer_momentum: float = 0.0

    def __post_init__(self) -> None:
        check_positive("delta", self.delta)
        _check_unit_interval("wd_ratio", self.wd_ratio)
        check_positive("eps", self.eps)
        check_positive("decay_scale", self.decay_scale)
        check_beta("buffer_momentum", self.buffer_momentum)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        if self.buffer_momentum == 0:
            return {}
        return {"m": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def cost(self, shape: tuple[int, ...]) -> float:
        # Up to two cosine tests (three dot products each) and one projection (four passes).
        return 10.0 * math.prod(shape)

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        target = u
        if self.buffer_momentum != 0:
            target = s["m"].mul_(self.buffer_momentum).add_(u)
        projected = self._project_(target, c)
        if target is not u:
            u.copy_(target)
        return self._decay_(u, c.param, c.weight_decay * self.decay_scale, projected)

    def _project_(self, u: Tensor, c: Ctx) -> Tensor | None:
        """Remove ``u``'s radial part in place if ``c.param`` looks scale-invariant; returns
        whether it did (a 0-d bool tensor; ``None`` for vectors, which are never projected).

        Both views' tests and projections are computed and the first passing one is selected on
        the device (``torch.where``), so the step never waits for the host: the values are those
        of the sequential rule (channel view first, then layer view, else ``u`` as it is)."""
        if u.ndim < 2 or u.numel() == 0:
            return None
        dtype = stats_dtype(u)
        theta, g, x = c.param.to(dtype), c.grad.to(dtype), u.to(dtype)
        passed, radial = [], []
        for rows in (theta.shape[0], 1):
            view = theta.reshape(rows, -1)
            cos = F.cosine_similarity(g.reshape(rows, -1), view, dim=1, eps=self.eps).abs_()
            passed.append(cos.amax() < self.delta / math.sqrt(view.shape[1]))
            unit = view / view.norm(dim=1, keepdim=True).add_(self.eps)
            along = (unit * x.reshape(rows, -1)).sum(dim=1, keepdim=True)
            radial.append((unit * along).reshape(u.shape))
        zero = radial[1].new_zeros(())
        u.sub_(
            torch.where(passed[0], radial[0], torch.where(passed[1], radial[1], zero)).to(u.dtype)
        )
        return passed[0] | passed[1]

    def _decay_(self, u: Tensor, param: Tensor, decay: float, projected: Tensor | None) -> Tensor:
        """``u + decay r theta`` with ``r = wd_ratio`` where ``projected`` holds, else 1; the
        same rounding as ``u.add_(theta, alpha=decay r)``, without reading ``projected``."""
        if decay == 0:
            return u
        if projected is None or self.wd_ratio == 1:
            return u.add_(param, alpha=decay)
        if u.dtype in (torch.float32, torch.float64):
            # addcmul by a 0-d factor of u's dtype rounds as add's alpha (cast to u's dtype).
            factor = torch.full((), decay, dtype=u.dtype, device=u.device)
            return u.addcmul_(param, factor.masked_fill_(projected, decay * self.wd_ratio))
        # 16-bit: a 0-d factor would be cast to 16 bits, alpha is not; both sums, then select.
        both = u.add(param, alpha=decay * self.wd_ratio), u.add(param, alpha=decay)
        return u.copy_(torch.where(projected, *both))


@dataclass(frozen=True, slots=True, kw_only=True)
class Dampen(TransformBase):
    r"""``u <- (1 - d) u``: SGD's dampening of the gradient before a sum momentum.

    Before ``Momentum(kind="sum", nesterov=False)`` this gives the buffer ``m <- mu m + (1-d) g``
    of clovaai/AdamP's SGDP and pytorch-optimizer's (torch.optim.SGD differs: its first step
    copies ``g`` undamped).

    Args:
        dampening: ``d`` in [0, 1).
    """

    key: ClassVar[str] = "dampen"
    elementwise: ClassVar[bool] = True
    capturable: ClassVar[bool] = True
    formula: ClassVar[str] = r"u \leftarrow (1 - d)\, u"
    dampening: float = 0.0

    def __post_init__(self) -> None:
        check_beta("dampening", self.dampening)

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return u.mul_(1.0 - self.dampening) if self.dampening != 0 else u

    def apply_foreach(
        self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]
    ) -> list[Tensor]:
        if self.dampening != 0:
            multi_tensor.mul_(us, 1.0 - self.dampening)
        return us
