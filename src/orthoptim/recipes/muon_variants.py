"""Muon with other Newton-Schulz coefficient presets."""

from __future__ import annotations

from orthoptim.functional.polar import PreNorm
from orthoptim.recipes.muon import muon
from orthoptim.transforms.base import Chain
from orthoptim.transforms.orthogonalize import ComputeDtype
from orthoptim.transforms.scaling import ShapeRule


def muon_polar(
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    coeffs: str = "polar_express_modded_nanogpt",
    ns_steps: int = 5,
    pre_norm: PreNorm = "frobenius",
    eps: float = 1e-6,
    compute_dtype: ComputeDtype = "bfloat16",
    shape_scale: ShapeRule = "keller",
) -> Chain:
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
    return muon(
        momentum=momentum,
        nesterov=nesterov,
        coeffs=coeffs,
        ns_steps=ns_steps,
        pre_norm=pre_norm,
        eps=eps,
        compute_dtype=compute_dtype,
        shape_scale=shape_scale,
    )
