"""Fused steps: a whole chain computed by one torch kernel, used in place of the eager chain.

The eager chain is the truth. A fused step replaces it only where it computes the same update
to round-off (``tests/optim/test_fused.py`` pins each against the eager chain) and where a
benchmark shows the gain; ``ChainOptimizer(fast_paths=False)`` always runs the eager chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from orthoptim._types import State
from orthoptim.transforms.adaptive import ScaleByAdam
from orthoptim.transforms.chain import Chain
from orthoptim.transforms.scaling import AddWeightDecay

_FUSED_DEVICES: frozenset[str] = frozenset({"cpu", "cuda"})
_FUSED_DTYPES: frozenset[torch.dtype] = frozenset({torch.float32, torch.float64})


@dataclass(frozen=True, slots=True)
class FusedAdamW:
    """``adamw()`` (``ScaleByAdam`` then ``AddWeightDecay``) as torch's fused AdamW kernel.

    One pass over each parameter, gradient and moment instead of the chain's working copy and
    its element-wise passes (timed against the eager chain in
    benchmarks/records/2026-11-25_step-speed-2). The kernel applies the decay as
    ``theta (1 - lr lambda)`` before the Adam step, the chain as one ``theta - lr (d + lambda
    theta)``: equal to round-off. It reads and writes the chain's own state buffers, so
    checkpoints are interchangeable with the eager path.

    Only float32 and float64 parameters (16-bit parameters keep float32 moments, which the kernel
    does not take) on CPU or CUDA, as plain tensors.
    """

    betas: tuple[float, float]
    eps: float
    exp_avg_key: str
    exp_avg_sq_key: str

    @staticmethod
    def of(chain: Chain) -> FusedAdamW | None:
        """The fused step computing ``chain``, or ``None`` when ``chain`` is not AdamW."""
        transforms = chain.transforms
        if (
            len(transforms) == 2
            and type(transforms[0]) is ScaleByAdam
            and type(transforms[1]) is AddWeightDecay
        ):
            adam, prefix = transforms[0], chain.prefixes[0]
            return FusedAdamW(adam.betas, adam.eps, f"{prefix}.exp_avg", f"{prefix}.exp_avg_sq")
        return None

    @staticmethod
    def takes(p: Tensor) -> bool:
        """Whether the kernel can step parameter ``p`` (its step counter then lives on ``p``'s
        device, as the kernel reads it there)."""
        return (
            type(p) in (torch.nn.Parameter, Tensor)
            and p.device.type in _FUSED_DEVICES
            and p.dtype in _FUSED_DTYPES
        )

    def fits(self, p: Tensor, state: State) -> bool:
        """Whether the kernel can step ``p`` with ``state`` (empty before its first step)."""
        return (
            self.takes(p)
            and p.grad is not None
            and p.grad.layout == torch.strided
            and (not state or state[self.exp_avg_key].dtype == p.dtype)
        )

    def supports(self, params: Sequence[Tensor], states: Sequence[State]) -> bool:
        """Whether the kernel can step these parameters with these states."""
        return all(
            self.fits(p, s) and s["step"].device == p.device
            for p, s in zip(params, states, strict=True)
        )

    def step(
        self,
        params: Sequence[Tensor],
        states: Sequence[State],
        lr: float,
        weight_decay: float,
        grad_scale: Tensor | None = None,
        found_inf: Tensor | None = None,
    ) -> None:
        """One AdamW step of every parameter; ``state["step"]`` already counts this step. With
        ``grad_scale`` (``torch.amp.GradScaler``), the kernel unscales each gradient as it reads
        it, and writes it back unscaled. With ``found_inf`` (nonzero: skip), the kernel leaves
        parameters and moments as they are where it is set, and the step counters are counted
        back, all on the device: no host read."""
        by_device_dtype: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):
            by_device_dtype.setdefault((p.device, p.dtype), []).append(i)
        for indices in by_device_dtype.values():
            torch._fused_adamw_(
                [params[i] for i in indices],
                [params[i].grad for i in indices],
                [states[i][self.exp_avg_key] for i in indices],
                [states[i][self.exp_avg_sq_key] for i in indices],
                [],
                [states[i]["step"] for i in indices],
                lr=lr,
                beta1=self.betas[0],
                beta2=self.betas[1],
                weight_decay=weight_decay,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
                grad_scale=None
                if grad_scale is None
                else grad_scale.to(params[indices[0]].device, torch.float32),
                found_inf=None
                if found_inf is None
                else found_inf.to(params[indices[0]].device, torch.float32),
            )
            if found_inf is not None:
                steps = [states[i]["step"] for i in indices]
                skipped = found_inf.to(steps[0].device, torch.float32)
                torch._foreach_sub_(steps, [skipped] * len(steps))  # a list: no host read
