"""Hessian-vector products of a step, for chains that ``needs_hvp`` (PSGD's
``curvature="hvp"``), read as ``Ctx.hvp``.

``step(closure)`` with a closure that calls ``loss.backward(create_graph=True)`` (the usage
example: ``recipes.psgd.psgd_kron``, docs/architecture.md, "The step, top to bottom").
After the closure the shell asks each such route's chain for its probes (``hvp_probe``: the
transform's own generator, seeded by the step, so a resumed run draws the same ones), and where
any parameter has one, differentiates ``sum_i <g_i, v_i>`` once more (one double backward for
all of them): ``h_i = sum_j H_ij v_j`` over the probed parameters ``j``. The gradients are then
detached, which frees the graph (and breaks the parameter-gradient cycle that
``backward(create_graph=True)`` makes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from orthoptim.groups import names_of
from orthoptim.nonfinite import NonFiniteGradientError, all_finite
from orthoptim.recipes.plan import Plan


def check_closure(
    param_groups: Sequence[Mapping[str, Any]], plan: Plan, closure: Callable[[], Any] | None
) -> None:
    """``ValueError`` where a group's route reads Hessian-vector products and no closure was
    given: called before anything changes."""
    if closure is not None:
        return
    for group in param_groups:
        if plan.route_named(group["route"]).chain.needs_hvp:
            raise ValueError(
                f"route {group['route']!r} reads Hessian-vector products (e.g. psgd_kron "
                "curvature='hvp'): call step(closure) with a closure that zeroes the gradients, "
                "computes the loss and calls loss.backward(create_graph=True)"
            )


def hessian_vector_products(
    state: Mapping[Tensor, Mapping[str, Tensor]],
    param_groups: Sequence[Mapping[str, Any]],
    plan: Plan,
) -> dict[Tensor, tuple[Tensor, Tensor]]:
    """``{p: (v, H v)}`` for the parameters (with a gradient) whose route's chain draws a probe
    at this step, after the closure has run; ``{}`` where none does. Every gradient is detached
    after, probes or not, so no graph outlives the step.

    ``ValueError`` where no gradient of those routes carries a graph (the closure did not call
    ``backward(create_graph=True)``), before any parameter or state changes. The products join
    the gradients in the shell's non-finite check (``raise_for_products`` names one)."""
    probed: list[tuple[str, Tensor, Tensor]] = []
    graphs = checked = False
    index = -1  # the parameter's place among all of them: probes independent across parameters
    for group in param_groups:
        chain = plan.route_named(group["route"]).chain
        for name, p in zip(names_of(group), group["params"], strict=True):
            index += 1
            if not chain.needs_hvp or p.grad is None:
                continue
            checked = True
            graphs = graphs or p.grad.requires_grad
            counter = state.get(p, {}).get("step")
            step = 1 if counter is None else int(counter.item()) + 1
            v = chain.hvp_probe(p, step, index)
            if v is not None:
                probed.append((name, p, v))
    if checked and not graphs:
        raise ValueError(
            "the gradients carry no graph, so no Hessian-vector product can be taken: the "
            "closure must call loss.backward(create_graph=True)"
        )
    products: dict[Tensor, tuple[Tensor, Tensor]] = {}
    if probed:
        # A gradient without a graph (it does not depend on the parameters) adds no H v.
        outputs = [(g, v) for _, p, v in probed for g in [cast(Tensor, p.grad)] if g.requires_grad]
        hs: Sequence[Tensor] = (
            torch.autograd.grad(
                [g for g, _ in outputs],
                [p for _, p, _ in probed],
                grad_outputs=[v for _, v in outputs],
                allow_unused=True,
                materialize_grads=True,
            )
            if outputs
            else [torch.zeros_like(p) for _, p, _ in probed]
        )
        products = {p: (v, h.detach()) for (_, p, v), h in zip(probed, hs, strict=True)}
    for group in param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.grad_fn is not None:
                p.grad = p.grad.detach()
    return products


def raise_for_products(
    param_groups: Sequence[Mapping[str, Any]], products: Mapping[Tensor, tuple[Tensor, Tensor]]
) -> None:
    """``NonFiniteGradientError`` naming the first parameter whose ``H v`` is not finite, where
    the step's non-finite check failed and every gradient is finite (else ``nonfinite.raise_for``
    names the gradient); called on that error path only, so a step reads nothing more."""
    named = [(n, p) for g in param_groups for n, p in zip(names_of(g), g["params"], strict=True)]
    if any(p.grad is not None and not all_finite([p.grad]) for _, p in named):
        return
    for name, p in named:
        if p in products and not all_finite([products[p][1]]):
            raise NonFiniteGradientError(
                f"Hessian-vector product of parameter {name or '<unnamed>'} holds NaN, Inf, or a "
                "value whose square overflows; nothing was updated (pass nonfinite='skip' to "
                "skip such steps instead)"
            )


@contextlib.contextmanager
def double_backward_attention(enabled: bool = True) -> Iterator[None]:
    """Where ``enabled``: ``scaled_dot_product_attention`` in the forward inside runs torch's
    math kernel, the one whose backward can itself be differentiated (the flash and
    memory-efficient kernels' backward cannot: a closure that calls
    ``loss.backward(create_graph=True)`` through them fails with "derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"). Wrap the
    forward of a closure for an optimizer that reads Hessian-vector products
    (``Plan.needs_graph``)."""
    if not enabled:
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield
