"""The registry's entry points: ``build`` (the one way users, the CLI and the arena build an
optimizer), ``get``, ``names`` and ``show``, over the specs of ``orthoptim.specs``.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from orthoptim._types import ParamsLike
from orthoptim.distributed import is_distributed
from orthoptim.nonfinite import NonFinitePolicy
from orthoptim.optim import ChainOptimizer
from orthoptim.recipes import Plan
from orthoptim.recipes.switch import FROM_ADAMW, from_adamw, with_lr_rule
from orthoptim.routing import HEAD_NAMES, is_named_parameters
from orthoptim.specs import REGISTRY, Spec
from orthoptim.transforms import Chain, explain
from orthoptim.transforms.capture import attach_captures, uncapturable_params

__all__ = ["REGISTRY", "Spec", "build", "get", "names", "show"]

_BY_NAME: dict[str, Spec] = {spec.name: spec for spec in REGISTRY}


def get(name: str) -> Spec:
    """The spec called ``name``; ``KeyError`` with close matches otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        base = name.removesuffix("_adamw")
        if base != name and base in _BY_NAME and _BY_NAME[base].adamw is not None:
            raise KeyError(
                f"unknown optimizer {name!r}: build({base!r}, model) brings AdamW for the "
                f"embeddings, head, biases and norms (set its lr with adamw_lr=...)"
            ) from None
        close = difflib.get_close_matches(name, list(_BY_NAME), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown optimizer {name!r}{hint} (known: {', '.join(_BY_NAME)})") from None


def names(pattern: str = "*", tag: str | None = None) -> list[str]:
    """Registered names matching the ``fnmatch`` ``pattern`` (and carrying ``tag``), in order."""
    return [
        s.name
        for s in REGISTRY
        if fnmatch.fnmatchcase(s.name, pattern) and (tag is None or tag in s.tags)
    ]


def build(
    name: str,
    params_or_model: ParamsLike,
    lr: float | None = None,
    weight_decay: float | None = None,
    nonfinite: NonFinitePolicy = "raise",
    process_group: Any = None,
    fast_paths: bool = True,
    foreach: bool | None = None,
    capturable: bool = False,
    overrides: Mapping[str, str] | None = None,
    head_names: Sequence[str] = HEAD_NAMES,
    layouts: Mapping[str, str] | None = None,
    example_input: Any = None,
    from_adamw_lr: float | None = None,
    telemetry_every: int | None = None,
    **recipe_options: Any,
) -> ChainOptimizer:
    """Build the registered optimizer ``name``: the entry point of users, the CLI and the arena.

    Given an ``nn.Module``, the optimizer covers the WHOLE model: a matrix optimizer such as
    ``muon`` brings its AdamW route (hidden matrices -> it, embeddings, heads, biases and norm
    gains -> AdamW; ``recipes.plan.with_adamw``). Param groups that carry a ``"role"`` key are
    routed the same way. Given tensors or groups without roles, the recipe is applied to them as
    they are, and a tensor it cannot update (a vector for ``muon``) raises ``ValueError``.

    The AdamW route's options (``recipes.PLAN_OPTIONS``) go with the recipe's:
    ``adamw_lr`` (absolute: keep your AdamW lr for the AdamW route and sweep ``lr``) or
    ``adamw_lr_scale`` (relative to ``lr``; the family's published pairing by default),
    ``adamw_weight_decay``, ``adamw_betas``, ``adamw_eps``. Either way the route's groups keep
    their lr relative to ``lr`` (``lr_scale``), so every torch scheduler moves both together.

    Switching from AdamW: ``from_adamw_lr=3e-4`` (your AdamW lr) instead of ``lr``,
    ``adamw_lr`` and ``adamw_lr_scale`` (``ValueError`` with any of them) runs the AdamW route
    at that lr and the matrix route at the lr whose update has AdamW's RMS: Moonlight's
    matching (Liu et al. 2025, "Muon is Scalable for LLM Training", arXiv 2502.16982: Muon's
    update ``O`` times ``0.2 sqrt(max(A, B))`` has RMS 0.2, AdamW's typical 0.2-0.4, so both
    share AdamW's lr; ``shape_scale="moonlight_rms"`` is set unless given). Each family's
    rule, from its update's RMS, is in ``recipes.switch.FROM_ADAMW`` (e.g. ``mars_lion``:
    a sign update has RMS 1, so 0.2 x the AdamW lr); other families raise ``ValueError``
    naming the supported ones. ``describe()`` and ``explain()`` print the rule.

    Args:
        name: a registry name (``orthoptim.registry.names()``).
        params_or_model: an ``nn.Module``, tensors, ``(name, tensor)`` pairs, or param groups.
        lr: learning rate; the spec's default when ``None``.
        weight_decay: weight decay; the spec's default when ``None``.
        nonfinite: ``"raise"``, ``"skip"`` or ``"off"`` (torch.optim's: no check), what a step
            with a NaN/Inf gradient does (``ChainOptimizer``).
        process_group: share the matrix steps of replicated parameters over this group
            (``ChainOptimizer``; DDP models and FSDP2 parameters are detected without it).
        fast_paths: run a route whose chain a torch kernel computes in one pass (AdamW) with
            that kernel (``ChainOptimizer``); ``False``: always the eager chain.
        foreach: multi-tensor kernels over each param group where the step can use them
            (``ChainOptimizer``); ``None``: on for GPUs and other accelerators, off on the CPU.
        capturable: step counters and a tensor ``lr`` stay on the device, for captured and
            compiled steps (``ChainOptimizer``; ``ValueError`` where a transform cannot).
        overrides: ``{parameter name or glob: role}``, correcting ``routing.classify``
            (``ValueError`` naming a pattern that matches nothing or an unknown role).
        head_names: module names that mark the output layer (``routing.HEAD_NAMES``).
        layouts: ``{parameter name or glob: layout}``, how a weight stores its matrix
            (``"in_out"`` for ``y = x W``; ``functional.layout``), correcting
            ``routing.layouts``.
        example_input: what ``model(...)`` takes for a small batch: routing then finds heads,
            tables and layouts by one traced forward (``model_trace``) instead of by names.
        from_adamw_lr: your AdamW lr: both routes' lrs from it (above; ``recipes.switch``).
        telemetry_every: measure every N-th step for ``opt.telemetry()`` (``ChainOptimizer``,
            ``orthoptim.telemetry``); ``None``: off, no extra work in the step.
        **recipe_options: keyword options of the recipe and, for a whole model, of its AdamW
            route (``TypeError`` for unknown ones).
    """
    spec = get(name)
    # Read more than once below; may be a generator.
    items: nn.Module | list[Any] = (
        params_or_model if isinstance(params_or_model, nn.Module) else list(params_or_model)
    )
    whole_model = isinstance(items, nn.Module) or _has_roles(items) or is_named_parameters(items)
    rule = None
    if from_adamw_lr is not None:
        if not whole_model:
            raise ValueError(
                "from_adamw_lr sets the lrs of a whole model's two routes (matrices, AdamW): "
                f"pass the nn.Module, named parameters or groups with a 'role' to build({name!r}, "
                "...)"
            )
        lr, recipe_options, rule = from_adamw(name, from_adamw_lr, {**recipe_options, "lr": lr})
    recipe: Chain | Plan
    if whole_model:
        plan = spec.whole_model_plan(recipe_options)
        recipe = plan if rule is None else with_lr_rule(plan, rule)
    else:
        recipe = spec.make(recipe_options)
    check_distributable(spec, recipe, items, process_group)
    if recipe.needs_module and not isinstance(items, nn.Module):
        raise ValueError(
            f"{name} reads layer inputs and output gradients through module hooks, so it needs "
            f"the nn.Module: orthoptim.build({name!r}, model), not tensors or param groups"
        )
    chains = [r.chain for r in recipe.routes] if isinstance(recipe, Plan) else [recipe]
    # Layers the hooks cannot see go to the AdamW route, saying why: never a preconditioner
    # that silently stays the identity.
    hooked = items if recipe.needs_module and isinstance(items, nn.Module) else None
    reroutes = None if hooked is None else uncapturable_params(hooked)
    captures = [] if hooked is None else attach_captures(chains, hooked)
    try:
        return ChainOptimizer(
            items,
            recipe,
            lr=spec.lr if lr is None else lr,
            weight_decay=spec.weight_decay if weight_decay is None else weight_decay,
            overrides=overrides,
            head_names=head_names,
            layouts=layouts,
            example_input=example_input,
            reroutes=reroutes,
            name=spec.name,
            nonfinite=nonfinite,
            process_group=process_group,
            fast_paths=fast_paths,
            foreach=foreach,
            capturable=capturable,
            telemetry_every=telemetry_every,
        )
    except Exception:
        for capture in captures:  # leave the model without hooks
            capture.remove()
        raise


def _has_roles(params: list[Any]) -> bool:
    """Whether ``params`` are param groups that name their role (routed by the plan)."""
    return any(isinstance(g, dict) and g.get("role") is not None for g in params)


def check_distributable(
    spec: Spec, recipe: Chain | Plan, params_or_model: ParamsLike, process_group: Any
) -> None:
    """``ValueError`` if ``spec``'s ``recipe`` cannot run distributed and these parameters
    would be."""
    reason = single_process_reason(spec, recipe)
    if reason is not None and is_distributed(params_or_model, process_group):
        raise ValueError(
            f"{spec.name} cannot run distributed (DDP, FSDP2 or a process group): {reason}. "
            "Use it in a single process, or build another optimizer."
        )


def single_process_reason(spec: Spec, recipe: Chain | Plan) -> str | None:
    """Why ``spec``'s ``recipe`` cannot run distributed; ``None`` where it can."""
    reason = spec.single_process_only
    if reason is None and recipe.needs_module:
        reason = (
            "it reads layer activations through module hooks, and each rank's hooks see only "
            "its own batch"
        )
    if reason is None and recipe.route_wide:
        reason = (
            "these options need all of a route's parameters in one step (blocks='model' of mfac "
            "or psgd_lra: one window or preconditioner over the whole model; scope='model' of "
            "induced_metric: one gradient norm over it), and each owner rank holds only its "
            "own; blocks='parameter' (scope='parameter') runs distributed"
        )
    return reason


def show(name: str) -> str:
    """A spec in words: paper, reference, defaults, options, and the update rule of each route."""
    spec = get(name)
    plan = spec.whole_model_plan()
    lines = [
        f"{spec.name}",
        f"  paper:     {spec.paper}",
        f"  reference: {spec.reference or '-'}",
        f"  defaults:  lr={spec.lr:g}, weight_decay={spec.weight_decay:g}",
        f"  tags:      {', '.join(sorted(spec.tags)) or '-'}",
        "  options:   " + (", ".join(f"{k}={v!r}" for k, v in spec.options().items()) or "none"),
    ]
    if spec.race_tasks is not None:
        lines.append(f"  race:      {', '.join(spec.race_tasks)} only (Spec.race_tasks)")
    match = FROM_ADAMW.get(spec.name)
    if match is not None:
        needs = "".join(f", {k}={v!r}" for k, v in match.options.items())
        lines.append(f"  from_adamw_lr: lr = {match.lr_ratio:g} x AdamW's{needs} ({match.reason})")
    if plan.estimator is not None:
        lines.append(f"  gradient:  {plan.estimator!r}")
        lines.append(f"    {plan.estimator.explain()}")
    for route in plan.routes:
        lines.append(f"  route {route.name} ({', '.join(route.roles)}), {route.describe_lr()}:")
        lines.append(f"    {route.chain!r}")
        lines.extend("    " + line for line in explain(route.chain).splitlines())
    return "\n".join(lines)
