"""Muon, its Polar Express variant, and the AdamW route that completes them."""

from __future__ import annotations

from typing import Any

from orthoptim.functional.polar import PreNorm
from orthoptim.recipes.options import default, extends
from orthoptim.recipes.plan import AdamWRoute
from orthoptim.transforms import (
    AddWeightDecay,
    Chain,
    Momentum,
    Orthogonalize,
    ScaleByShape,
    chain,
)
from orthoptim.transforms.momentum import MomentumDtype
from orthoptim.transforms.orthogonalize import ComputeDtype
from orthoptim.transforms.scaling import ShapeRule

MUON_ADAMW = AdamWRoute(lr_scale=0.015, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
"""Muon's AdamW route: 0.015 x Muon's lr (3e-4 / 0.02, the pairing in KellerJordan/Muon's README
and ``MuonWithAuxAdam``), betas (0.9, 0.95), eps 1e-10 as the reference, and no weight decay on
embeddings, heads, biases and norm gains (the README example uses 0.01 for both routes). Muon
Polar Express, FISMO and the noise-adaptive Muon use it too. Racing or migrating from AdamW, pass
your AdamW lr as ``adamw_lr`` instead: the ratio ties the route to the matrix lr."""


def muon(
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    momentum_dtype: MomentumDtype = default(Momentum, "dtype"),
    coeffs: str = default(Orthogonalize, "coeffs"),
    ns_steps: int = default(Orthogonalize, "ns_steps"),
    pre_norm: PreNorm = default(Orthogonalize, "pre_norm"),
    eps: float = default(Orthogonalize, "eps"),
    compute_dtype: ComputeDtype = default(Orthogonalize, "compute_dtype"),
    shape_scale: ShapeRule = default(ScaleByShape, "rule"),
    batch_by_shape: bool | None = default(Orthogonalize, "batch_by_shape"),
) -> Chain:
    """Muon (Jordan et al., 2024): MomentUm Orthogonalized by Newton-Schulz, for hidden matrices.

    Chain: ``m <- beta m + (1-beta) g``; ``u <- g + beta (m - g)`` (Nesterov) or ``m``;
    ``u <- NS_5(u)``; ``u <- sqrt(max(1, rows/cols)) u``; ``u <- u + lambda theta``.

    Differences from the reference (KellerJordan/Muon muon.py): ``p.grad`` is never modified
    (the reference's Nesterov blend writes into the gradient); conv kernels are scaled by their
    matrix view's ``rows/cols`` (the reference reads the 4-D gradient's last two dimensions); the
    Newton-Schulz step uses fused ``addmm`` like torch.optim.Muon, which rounds differently from
    the reference's separate products in bfloat16. ``pre_norm="frobenius_clamp"`` reproduces
    torch.optim.Muon's ``X / max(||X||, eps)``; torch's default ``lr=1e-3, weight_decay=0.1``
    are not ours (``lr=0.02, weight_decay=0`` from the reference). ``batch_by_shape``
    (``Orthogonalize``): same-shape matrices of a group in one batched iteration, an execution
    choice that pays on some machines and not others (by default where the step runs
    multi-tensor, a GPU's default, and not on the CPU). ``momentum_dtype=
    "float32"`` keeps the momentum of 16-bit parameters in float32 (``Momentum.dtype``); the
    references, and our default, keep it in the parameter's dtype.

    References: Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024);
    KellerJordan/Muon muon.py; torch.optim.Muon (torch==2.13.0).
    """
    return chain(
        Momentum(beta=momentum, kind="ema", nesterov=nesterov, dtype=momentum_dtype),
        Orthogonalize(
            coeffs=coeffs,
            ns_steps=ns_steps,
            pre_norm=pre_norm,
            eps=eps,
            compute_dtype=compute_dtype,
            batch_by_shape=batch_by_shape,
        ),
        ScaleByShape(rule=shape_scale),
        AddWeightDecay(),
    )


@extends(muon, coeffs="polar_express_modded_nanogpt", eps=1e-6)
def muon_polar(**options: Any) -> Chain:
    """Muon whose Newton-Schulz step uses the Polar Express schedule (Amsel et al. 2025).

    Chain: as ``muon``, with ``u <- PE_5(u)``: five per-step optimal quintics computed for 5
    iterations (safety 2e-2, cushion 2) after ``u / (1.02 ||u||_F + 1e-6)``. After 5 float32
    steps on inputs with spectra log-spaced from 1 to 1e-3 its singular values lie in
    [0.307, 1.141] where Keller's quintic gives [0.155, 1.202] (bfloat16, as run here:
    [0.259, 1.143] vs [0.127, 1.203]; measured in ``tests/recipes/test_muon_polar.py``).
    The update's size is Muon's, so Muon's lr 0.02 carries over.

    Differences from the reference (KellerJordan/modded-nanogpt@f411b3d ``train_gpt.py``
    ``polar_express``): plain eager ``addmm`` on one matrix at a time (the reference is compiled
    and batched, with Triton ``X X^T`` kernels), so bfloat16 results differ by rounding; Nesterov
    momentum in the parameter's dtype (the reference upcasts to float32); Keller's shape scale
    ``sqrt(max(1, rows/cols))`` instead of the reference's per-parameter lr table, and no momentum
    warm-up schedule. ``coeffs="polar_express_paper"`` uses the paper's own schedule (Algorithm 1,
    safety 1.01) instead.

    References: Noah Amsel, David Persson, Christopher Musco, Robert M. Gower, "The Polar Express:
    Optimal Matrix Sign Methods and Their Application to the Muon Algorithm" (arXiv 2505.16932);
    KellerJordan/modded-nanogpt@f411b3d346aa52d3504324ca93c230fd84c6c07f train_gpt.py.
    """
    return muon(**options)
