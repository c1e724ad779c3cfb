"""The update against the gradient's signs: Grams (Adam's magnitudes, the gradient's signs) and
the cautious mask of any recipe (entries whose sign disagrees with the gradient's dropped)."""

from __future__ import annotations

import dataclasses
from typing import overload

from orthoptim.functional.moments import EpsPlacement
from orthoptim.recipes.options import default
from orthoptim.recipes.plan import Plan
from orthoptim.transforms.adaptive import ScaleByAdam
from orthoptim.transforms.cautious import CautiousMask, CautiousRescale
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.grams import AlignToGradientSign
from orthoptim.transforms.radial import ProjectRadial
from orthoptim.transforms.scaling import AddWeightDecay

DECAY_CARRIERS = (AddWeightDecay, ProjectRadial)
"""Transforms that add the weight decay: ``cautious`` masks before one that ends a chain."""


def grams(
    *,
    betas: tuple[float, float] = default(ScaleByAdam, "betas"),
    eps: float = 1e-6,
    eps_placement: EpsPlacement = "raw",
) -> Chain:
    """Grams (Cao, Li, Song 2024, arXiv 2412.17107): Adam's magnitude, the gradient's sign.

    Chain: Adam's bias-corrected direction ``a``; ``u <- sign(g) |a|``; ``u <- u + lambda theta``
    (decoupled decay ``theta (1 - lr lambda)``, as the reference and the paper's Algorithm 1).
    ``eps_placement="raw"`` adds ``eps`` to ``sqrt(v)`` before bias correction (the reference);
    ``"debiased"`` to ``sqrt(v_hat)`` (pytorch-optimizer 4.1.0 ``Grams``). Every parameter is
    updated, as in the reference (no plan).

    Differences from the reference (Gunale0926/Grams@f91a375 ``grams/src/grams.py``): ``p.grad``
    is not overwritten by its sign (the reference's ``grad.sign_()`` does); no ``correct_bias``
    switch (always on, the reference's default); moments of 16-bit parameters in float32.

    References: arXiv 2412.17107; Gunale0926/Grams@f91a375daaa85c5a4644e3f064ca6693c59f6cdb;
    pytorch-optimizer==4.1.0 ``Grams``.
    """
    return chain(
        ScaleByAdam(betas=betas, eps=eps, eps_placement=eps_placement),
        AlignToGradientSign(),
        AddWeightDecay(),
    )


@overload
def cautious(
    recipe: Chain, *, rescale: CautiousRescale = ..., after: str | None = None
) -> Chain: ...


@overload
def cautious(recipe: Plan, *, rescale: CautiousRescale = ..., after: str | None = None) -> Plan: ...


def cautious(
    recipe: Chain | Plan,
    *,
    rescale: CautiousRescale = default(CautiousMask, "rescale"),
    after: str | None = None,
) -> Chain | Plan:
    """The cautious variant of any recipe (Liang et al. 2024, arXiv 2411.16085).

    Inserts ``CautiousMask`` (``u <- s u * 1[u g > 0]``) right after the transform whose state key
    is ``after`` (e.g. ``"momentum"``: C-Muon masks the momentum before orthogonalising), or by
    default before the chain's last transform if that one adds the weight decay
    (``AddWeightDecay``, ``ProjectRadial``), else at the end: C-AdamW masks Adam's update, never
    the decay, and pytorch-optimizer's cautious AdamP masks before projecting.
    A ``Plan`` gets the mask in every route. ``cautious(adamw())`` is C-AdamW of
    kyleliang919/C-Optim@2c0517c up to ``eps`` placement (its ``eps`` is added to ``sqrt(v)``).

    Differences from the reference (C-Optim ``c_muon.py``): its mask compares the momentum, not
    the Nesterov update it scales, with the gradient.

    References: arXiv 2411.16085; kyleliang919/C-Optim@2c0517c4db2e50b56d389ba4803eab1f4b3b8ae3.
    """
    if isinstance(recipe, Plan):
        return Plan(
            tuple(
                dataclasses.replace(r, chain=cautious(r.chain, rescale=rescale, after=after))
                for r in recipe.routes
            )
        )
    if not isinstance(recipe, Chain):
        raise TypeError(f"cautious() takes a Chain or a Plan, got {type(recipe).__name__}")
    mask = CautiousMask(rescale=rescale)
    if after is not None:
        return recipe.insert(mask, after=after)
    last = recipe.transforms[-1] if recipe.transforms else None
    if isinstance(last, DECAY_CARRIERS):
        return recipe.replace(recipe.prefixes[-1], chain(mask, last))
    return chain(recipe, mask)
