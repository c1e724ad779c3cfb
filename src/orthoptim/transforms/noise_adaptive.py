"""Noise-adaptive layerwise learning rates: a per-layer factor from the gradient noise level."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

from orthoptim._checks import check_beta, check_choice, check_matrix
from orthoptim._types import State
from orthoptim.functional.moments import bias_correction, stats_dtype
from orthoptim.functional.robust import (
    DUAL_NORMS,
    NUCLEAR_NORMS,
    DualNorm,
    NuclearNorm,
    dual_norm,
)
from orthoptim.transforms.base import Ctx, TransformBase

NoiseReference = Literal["mean", "min"]
NOISE_REFERENCES: tuple[str, ...] = get_args(NoiseReference)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleByLayerNoise(TransformBase):
    r"""``u <- f_l u``, ``f_l = min(1, sigma_ref / sigma_l)``: noisier layers get a smaller lr.

    Per layer ``l`` (parameter), the noise level is an EMA of the squared dual norm of the
    gradient difference, ``H_l <- beta H_l + (1 - beta) ||G_t - G_{t-1}||_*^2`` (for independent
    minibatch noise of variance ``sigma^2`` its mean is ``2 sigma^2`` plus the drift of the true
    gradient), bias-corrected, ``sigma_l = sqrt(H_l / (1 - beta^k))`` after ``k`` differences.
    The factor is relative to the layers stepped together (a param group): ``sigma_ref`` is the
    mean (``reference="mean"``) or the smallest (``"min"``) of their positive ``sigma``, so the
    quietest layers keep the group's lr and none is raised above it. A layer with
    ``sigma_l = 0`` (identical gradients, or its first step) keeps factor 1; with zero noise
    everywhere the chain is unchanged. It reads the raw gradient, so its place in a chain does
    not change the estimate; placed last it scales the layer's whole step (decay included).

    State: ``prev_grad`` (the last gradient), ``noise`` (``H_l``), ``factor`` (last ``f_l``).

    Args:
        beta: EMA decay of the noise estimate, in [0, 1).
        dual_norm: the dual of the LMO's norm: ``"nuclear"`` (spectral LMO: Muon family, exact
            up to rounding, ``functional.robust.dual_norm``), ``"frobenius"``, ``"l1"`` (sign LMO).
        reference: ``"mean"`` or ``"min"``, the group's reference noise level.
        nuclear_norm: how ``"nuclear"`` is computed (``functional.robust.nuclear_norm``):
            ``"gram"`` (the default: the Gram matrix in the gradient's statistics dtype,
            float32 for float32 and 16-bit gradients, up to 1.5% of the norm off for low-rank
            differences) or ``"exact"`` (float64 Gram matrix, exact up to rounding).
    """

    key: ClassVar[str] = "layer_noise"
    formula: ClassVar[str] = (
        r"H_l \leftarrow \beta H_l + (1-\beta)\|G_t - G_{t-1}\|_*^2;\;"
        r"u \leftarrow \min(1, \sigma_{\mathrm{ref}} / \sigma_l)\, u,\ \sigma_l = \sqrt{\hat H_l}"
    )
    beta: float = 0.95
    dual_norm: DualNorm = "nuclear"
    reference: NoiseReference = "mean"
    # "gram" trains as "exact" does (tests/recipes/test_nalr.py) in 0.64x the step time
    nuclear_norm: NuclearNorm = "gram"

    def __post_init__(self) -> None:
        check_beta("noise_beta", self.beta)
        check_choice("dual_norm", self.dual_norm, DUAL_NORMS)
        check_choice("noise_reference", self.reference, NOISE_REFERENCES)
        check_choice("nuclear_norm", self.nuclear_norm, NUCLEAR_NORMS)

    def validate(self, p: Tensor, name: str) -> None:
        if self.dual_norm == "nuclear":
            check_matrix("dual_norm='nuclear'", tuple(p.shape), name)

    def init(self, p: Tensor) -> dict[str, Tensor]:
        dtype = stats_dtype(p)
        return {
            "prev_grad": torch.zeros_like(p, memory_format=torch.preserve_format),
            "noise": torch.zeros((), dtype=dtype, device=p.device),
            "factor": torch.ones((), dtype=dtype, device=p.device),
        }

    def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
        return self.apply_many([u], [s], [c])[0]

    def apply_many(self, us: list[Tensor], ss: Sequence[State], cs: Sequence[Ctx]) -> list[Tensor]:
        if not us:
            return us
        sigmas = []
        for s, c in zip(ss, cs, strict=True):
            if c.step > 1:
                dt = s["noise"].dtype
                diff = dual_norm(
                    c.grad.to(dt) - s["prev_grad"].to(dt), self.dual_norm, self.nuclear_norm
                )
                s["noise"].mul_(self.beta).add_(diff.square(), alpha=1.0 - self.beta)
            s["prev_grad"].copy_(c.grad)
            count = c.step - 1
            sigmas.append(s["noise"] / bias_correction(self.beta, count) if count else s["noise"])
        dtype = sigmas[0].dtype
        for x in sigmas[1:]:
            dtype = torch.promote_types(dtype, x.dtype)
        sigma = torch.stack([x.to(dtype) for x in sigmas]).sqrt()
        noisy = sigma > 0
        if self.reference == "mean":
            ref = (sigma * noisy).sum() / noisy.sum().clamp_min(1)
        else:
            ref = torch.where(noisy, sigma, torch.inf).min()
        # No host sync: where a layer has no noise, its ratio (inf or nan) is never selected.
        factors = torch.where(noisy, (ref / sigma).clamp(max=1.0), torch.ones_like(sigma))
        for u, s, factor in zip(us, ss, factors, strict=True):
            s["factor"].copy_(factor)
            u.mul_(factor.to(u.dtype))
        return us
