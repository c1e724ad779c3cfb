"""Adam in a low-rank subspace of each matrix gradient (GaLore, SVD-free DCT), plus FRUGAL's
state-free update of the rest."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import (
    check_betas,
    check_choice,
    check_finite_nonnegative,
    check_matrix,
    check_positive,
    check_positive_int,
)
from orthoptim._types import State
from orthoptim.functional.moments import adam_direction, ema_, ema_square_, stats_dtype
from orthoptim.functional.polar import matrix_view
from orthoptim.functional.projection import (
    BLOCK_ORDERS,
    INDEX_PROJECTIONS,
    PROJECTIONS,
    BlockOrder,
    Projection,
    active_block,
    basis_columns,
    block_count,
    choose_subspace,
    dct_basis,
    oriented,
    project_down,
    project_up,
    rotate_moments,
    subspace_rank,
)
from orthoptim.transforms.base import BetasMoments, Ctx, TransformBase

RefreshMoments = Literal["keep", "reset", "rotate"]
REFRESH_MOMENTS: tuple[str, ...] = get_args(RefreshMoments)
Residual = Literal["none", "sgd", "sign_sgd"]
RESIDUALS: tuple[str, ...] = get_args(Residual)


@dataclass(frozen=True, slots=True, kw_only=True)
class LowRankAdam(BetasMoments, TransformBase):
    r"""Adam on ``G P`` (``P``: ``n x r``, orthonormal columns, ``n`` the shorter side of the
    matrix view), projected back: ``u <- scale * Adam(G P) P^T [+ residual_scale * rule(G - G P
    P^T)]`` with ``rule`` the identity (``"sgd"``) or ``sign`` (``"sign_sgd"``, FRUGAL).

    ``P`` is chosen from the gradient at steps ``1, 1 + update_every, ...`` (the GaLore
    reference's 0-based ``step % gap == 0``) by ``projection`` (``functional.projection``). At
    those refreshes ``refresh_moments`` says what Adam's moments do: ``"keep"`` them as they are
    (GaLore, the DCT reference's default), ``"reset"`` them to zero and restart bias correction
    (FRUGAL's ``reset_statistics=True``), or ``"rotate"`` them into the new subspace (the DCT
    reference's ``rotate_subspace``). With ``r = n`` the residual is zero by construction and is
    not computed (its round-off would have sign +-1 everywhere).

    ``projection="blocks"`` (FRUGAL's ``BlockOptimizer``) projects nothing within a matrix:
    whole tensors take turns. Of the route's ``N`` parameters, ``block_count(N,
    rank_fraction)`` are state-full in each period of ``update_every`` steps, chosen by
    ``block_order`` from the step and the parameter's place in its route (``Ctx.position``,
    ``functional.projection.active_block``); those get ``scale * Adam(G)``, the others
    ``residual_scale * rule(G)`` (zero for ``"none"``: BAdam). Every period restarts every
    tensor's moments and bias correction (``refresh_moments="reset"``, the only convention it
    takes: the reference clears a tensor's state whenever the blocks move).

    State: ``exp_avg``, ``exp_avg_sq`` of shape ``(max side, r)``, plus ``indices`` (int64,
    ``r``) for ``"dct"``/``"block"`` (the DCT basis is rebuilt, never stored) or ``basis``
    (``n x r``) for ``"svd"``/``"random"``; float32 for 16-bit parameters. ``"blocks"``:
    parameter-size moments while the tensor is state-full, released (empty ``(0,)`` tensors,
    ``TransformBase.held``) while it is state-free, as the reference frees them: a route's
    moments take ``2 * rank_fraction`` of AdamW's bytes (a stacked parameter, whose matrices
    share one buffer, keeps it allocated). The moments restart at every switch, so nothing is
    lost; ``ChainOptimizer.state_dict`` saves released moments as full-size zeros and
    ``load_state_dict`` releases zero ones again (``checkpoint.fill_released``, ``restore``).
    """

    key: ClassVar[str] = "lowrank"
    formula: ClassVar[str] = r"u \leftarrow s\,\mathrm{Adam}(GP)P^\top + \rho\,\phi(G - GPP^\top)"
    projection: Projection = "dct"
    block_order: BlockOrder = "descending"
    rank_fraction: float = 0.25
    update_every: int = 200
    scale: float = 1.0
    refresh_moments: RefreshMoments = "keep"
    residual: Residual = "none"
    residual_scale: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        check_choice("projection", self.projection, PROJECTIONS)
        check_choice("block_order", self.block_order, BLOCK_ORDERS)
        check_positive("rank_fraction", self.rank_fraction)
        if self.rank_fraction > 1:
            raise ValueError(f"rank_fraction must be in (0, 1], got {self.rank_fraction!r}")
        check_positive_int("update_every", self.update_every)
        check_positive("scale", self.scale)
        check_choice("refresh_moments", self.refresh_moments, REFRESH_MOMENTS)
        if self.projection == "blocks" and self.refresh_moments != "reset":
            raise ValueError(
                "projection='blocks' restarts the moments whenever the state-full tensors "
                f"change, as FRUGAL's BlockOptimizer does: refresh_moments must be 'reset', "
                f"got {self.refresh_moments!r}"
            )
        check_choice("residual", self.residual, RESIDUALS)
        check_finite_nonnegative("residual_scale", self.residual_scale)
        check_betas("betas", self.betas)
        check_positive("eps", self.eps)

    def validate(self, p: Tensor, name: str) -> None:
        check_matrix("LowRankAdam", tuple(p.shape), name)

    def _sides(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        rows, cols = shape[0], math.prod(shape[1:])
        m, n = max(rows, cols), min(rows, cols)
        return m, n, subspace_rank(n, self.rank_fraction)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        m, n, r = self._sides(tuple(p.shape))
        dtype = stats_dtype(p)
        if self.projection == "blocks":  # released until a period makes the tensor state-full
            return {
                "exp_avg": torch.zeros(0, dtype=dtype, device=p.device),
                "exp_avg_sq": torch.zeros(0, dtype=dtype, device=p.device),
            }
        state = {
            "exp_avg": torch.zeros(m, r, dtype=dtype, device=p.device),
            "exp_avg_sq": torch.zeros(m, r, dtype=dtype, device=p.device),
        }
        if self.projection in INDEX_PROJECTIONS:
            state["indices"] = torch.zeros(r, dtype=torch.int64, device=p.device)
        else:
            state["basis"] = torch.zeros(n, r, dtype=dtype, device=p.device)
        return state

    def held(self, p: Tensor) -> dict[str, Tensor]:
        if self.projection != "blocks":
            return self.init(p)
        dtype = stats_dtype(p)
        return {
            "exp_avg": torch.zeros(p.shape, dtype=dtype, device=p.device),
            "exp_avg_sq": torch.zeros(p.shape, dtype=dtype, device=p.device),
        }

    def _matrix(self, s: State, n: int) -> Tensor:
        if "basis" in s:
            return s["basis"]
        kind, dtype, device = self.projection, s["exp_avg"].dtype, s["exp_avg"].device
        return basis_columns(kind, n, s["indices"], dtype=dtype, device=device)

    def _refresh(self, x: Tensor, s: State, c: Ctx) -> None:
        n = x.shape[1]
        rotate = self.refresh_moments == "rotate" and c.step > 1
        old = self._matrix(s, n).clone() if rotate else None
        # Seeded by step and name, not the global RNG: a resumed run draws the same subspaces.
        generator = torch.Generator().manual_seed(
            (c.int_step * 2654435761 + zlib.crc32(c.name.encode())) % 2**63
        )
        s["indices" if "indices" in s else "basis"].copy_(
            choose_subspace(self.projection, x, s["exp_avg"].shape[1], generator)
        )
        if old is not None:
            rotate_moments(s["exp_avg"], s["exp_avg_sq"], old, self._matrix(s, n))
        elif self.refresh_moments == "reset":
            s["exp_avg"].zero_()
            s["exp_avg_sq"].zero_()

    def _state_full(self, c: Ctx) -> bool:
        """Whether this parameter is among its route's state-full tensors at ``c.step``."""
        count = block_count(c.route_size, self.rank_fraction)
        if self.block_order == "mirror" and (count % 2 or c.route_size < 2):
            raise ValueError(
                f"block_order='mirror' pairs each state-full tensor with its mirror image, so it "
                f"needs an even count of them: this route has {c.route_size} matrices, "
                f"rank_fraction {self.rank_fraction} makes {count} state-full"
            )
        period = (int(c.step) - 1) // self.update_every
        return active_block(self.block_order, period, c.position, c.route_size, count)

    def _apply_blocks(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        # The moments restart whenever the blocks move, so a state-free tensor's are released
        # (``(0,)``) at a period's first step and a state-full one's allocated as zeros when it
        # needs them: the same numbers as zeroing full-size buffers at every period's first
        # step, at the memory of the state-full tensors only (a stacked parameter's slice of
        # its shared buffer is zeroed instead, ``chain._Slice``). Shapes decide: no host read.
        t = (c.step - 1) % self.update_every + 1
        state_full = self._state_full(c)
        for key in ("exp_avg", "exp_avg_sq"):  # each on its own: a load releases zero ones
            buffer = s[key]
            if state_full and buffer.shape != u.shape:
                s[key] = torch.zeros_like(u, dtype=buffer.dtype)
            elif t == 1 and state_full:
                buffer.zero_()
            elif t == 1 and buffer.numel():
                s[key] = buffer.new_zeros(0)
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        if not state_full:
            if self.residual == "none":
                return u.zero_()
            if self.residual == "sign_sgd":
                u.sign_()
            return u if self.residual_scale == 1 else u.mul_(self.residual_scale)
        x = u.to(exp_avg.dtype)
        ema_(exp_avg, x, self.betas[0])
        ema_square_(exp_avg_sq, x, self.betas[1])
        out = adam_direction(exp_avg, exp_avg_sq, step=t, betas=self.betas, eps=self.eps)
        return u.copy_(out if self.scale == 1 else out.mul_(self.scale))

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        if self.projection == "blocks":
            return self._apply_blocks(u, s, c)
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        x = oriented(matrix_view(u)).to(exp_avg.dtype)
        n = x.shape[1]
        if (c.step - 1) % self.update_every == 0:
            self._refresh(x, s, c)
        where: dict[str, Tensor] = {}
        if self.projection == "block":
            where["indices"] = s["indices"]
        elif self.projection == "dct":
            where["basis"] = dct_basis(n, dtype=x.dtype, device=x.device)[:, s["indices"]]
        else:
            where["basis"] = s["basis"]
        low = project_down(x, **where)
        ema_(exp_avg, low, self.betas[0])
        ema_square_(exp_avg_sq, low, self.betas[1])
        reset = self.refresh_moments == "reset"
        t = (c.step - 1) % self.update_every + 1 if reset else c.step
        direction = adam_direction(exp_avg, exp_avg_sq, step=t, betas=self.betas, eps=self.eps)
        out = project_up(direction, n, **where).mul_(self.scale)
        if self.residual != "none" and low.shape[1] < n:
            rest = x - project_up(low, n, **where)
            step = rest.sign_() if self.residual == "sign_sgd" else rest
            out.add_(step, alpha=self.residual_scale)
        return u.copy_((out if u.shape[0] == x.shape[0] else out.mT).reshape(u.shape))

    def cost(self, shape: tuple[int, ...]) -> float:
        m, n, r = self._sides(shape)
        if self.projection == "blocks":
            return 10.0 * m * n
        step = 4.0 * m * n * r + 10.0 * m * r
        if self.residual != "none":
            step += 2.0 * m * n * r + 2.0 * m * n
        refresh = {"dct": 2.0 * m * n * n, "svd": 6.0 * m * n * n, "random": 4.0 * n * r * r}
        return step + refresh.get(self.projection, float(n)) / self.update_every
