"""Fused steps: a whole chain computed by one torch kernel, used in place of the eager chain.

The eager chain is the truth. A fused step replaces it only where it computes the same update
to round-off (``tests/optim/test_fused.py`` pins each against the eager chain) and where a
benchmark shows the gain; ``ChainOptimizer(fast_paths=False)`` always runs the eager chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from orthoptim._types import State
from orthoptim.functional.moments import stats_dtype
from orthoptim.transforms.adaptive import ScaleByAdam
from orthoptim.transforms.chain import Chain
from orthoptim.transforms.scaling import AddWeightDecay

_FUSED_DEVICES: frozenset[str] = frozenset({"cpu", "cuda"})
_FUSED_DTYPES: frozenset[torch.dtype] = frozenset({torch.float32, torch.float64})
_HALF_DTYPES: frozenset[torch.dtype] = frozenset({torch.float16, torch.bfloat16})
CAST_CHUNK = 1 << 25
"""Most elements of 16-bit parameters cast to float32 at once (``FusedAdamW``): 256 MB of float32
copies of the parameters and gradients, whatever the model's size."""


@dataclass(frozen=True, slots=True)
class FusedAdamW:
    """``adamw()`` (``ScaleByAdam`` then ``AddWeightDecay``) as torch's fused AdamW kernel.

    One pass over each parameter, gradient and moment instead of the chain's working copy and
    its element-wise passes (timed against the eager chain in
    benchmarks/records/2026-11-25_step-speed-2). The kernel applies the decay as
    ``theta (1 - lr lambda)`` before the Adam step, the chain as one ``theta - lr (d + lambda
    theta)``: equal to round-off. It reads and writes the chain's own state buffers, so
    checkpoints are interchangeable with the eager path.

    float32 and float64 parameters go to the kernel as they are. 16-bit parameters keep float32
    moments (``ScaleByAdam``), which the kernel does not take beside 16-bit parameters (its
    mixed-precision form is the reverse: float32 parameters, 16-bit moments), so they are cast:
    float32 copies of the parameters and gradients, at most ``CAST_CHUNK`` elements at a time,
    go through the kernel, and the parameters are copied back, each rounded once. Four
    multi-tensor kernels per chunk instead of the chain's passes per parameter; the chain rounds
    the update to 16 bits before adding it, so the two differ by about one 16-bit ulp of the
    parameter per step (``tests/optim/test_fused.py``). On this CPU the bf16 step takes 0.16x
    the chain's time one parameter at a time (0.47x its multi-tensor form), for up to 8 bytes
    per element of a chunk in transient copies (benchmarks/records/2026-12-06_gpu-ready-steps).
    On CPU or CUDA, plain tensors only.
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
        """Whether the kernel steps parameter ``p`` (its step counter then lives on ``p``'s
        device, as the kernel reads it there)."""
        return (
            type(p) in (torch.nn.Parameter, Tensor)
            and p.device.type in _FUSED_DEVICES
            and (p.dtype in _FUSED_DTYPES or p.dtype in _HALF_DTYPES)
        )

    def fits(self, p: Tensor, state: State) -> bool:
        """Whether the kernel can step ``p`` with ``state`` (empty before its first step)."""
        return (
            self.takes(p)
            and p.grad is not None
            and p.grad.layout == torch.strided
            and p.grad.dtype == p.dtype
            and (not state or state[self.exp_avg_key].dtype == stats_dtype(p))
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
        lr: float | Tensor,
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
        for (device, dtype), indices in by_device_dtype.items():
            scale = None if grad_scale is None else grad_scale.to(device, torch.float32)
            skip = None if found_inf is None else found_inf.to(device, torch.float32)
            chunks = _chunks(indices, params) if dtype in _HALF_DTYPES else [indices]
            for chunk in chunks:
                ps = [params[i] for i in chunk]
                gs = [cast(Tensor, p.grad) for p in ps]
                if dtype in _HALF_DTYPES:
                    ps, gs = _float32_copies(ps), _float32_copies(gs)
                steps = [states[i]["step"] for i in chunk]
                torch._fused_adamw_(
                    ps,
                    gs,
                    [states[i][self.exp_avg_key] for i in chunk],
                    [states[i][self.exp_avg_sq_key] for i in chunk],
                    [],
                    steps,
                    lr=lr,
                    beta1=self.betas[0],
                    beta2=self.betas[1],
                    weight_decay=weight_decay,
                    eps=self.eps,
                    amsgrad=False,
                    maximize=False,
                    grad_scale=scale,
                    found_inf=skip,
                )
                if dtype in _HALF_DTYPES:
                    torch._foreach_copy_([params[i] for i in chunk], ps)
                    if scale is not None:  # the gradients are left unscaled, as elsewhere
                        torch._foreach_copy_([cast(Tensor, params[i].grad) for i in chunk], gs)
                if skip is not None:
                    torch._foreach_sub_(steps, [skip] * len(steps))  # a list: no host read


def _chunks(indices: list[int], params: Sequence[Tensor]) -> list[list[int]]:
    """``indices`` in runs of at most ``CAST_CHUNK`` elements (a larger parameter alone)."""
    out: list[list[int]] = [[]]
    size = 0
    for i in indices:
        n = params[i].numel()
        if out[-1] and size + n > CAST_CHUNK:
            out.append([])
            size = 0
        out[-1].append(i)
        size += n
    return out


def _float32_copies(tensors: list[Tensor]) -> list[Tensor]:
    copies = [torch.empty_like(t, dtype=torch.float32) for t in tensors]
    torch._foreach_copy_(copies, tensors)
    return copies
