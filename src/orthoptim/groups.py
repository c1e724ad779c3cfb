"""Param groups: from what a user passes to ``ChainOptimizer`` to checked torch param groups, each
with its route, and the routing table (``describe``).

A group holds ``params`` (and ``param_names`` where parameters came with names), ``role``,
``layout``, ``route``, ``lr`` (the optimizer's, which schedulers set), ``lr_scale`` (the route's
lr relative to it), ``weight_decay``, a ``note`` where a parameter left its role's route, and
the live moment coefficients (``momentum`` or ``betas``) of the main chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from torch import Tensor, nn

from orthoptim._checks import check_finite_nonnegative, check_positive
from orthoptim._types import ROLES, ParamsLike
from orthoptim.functional.layout import DEFAULT_LAYOUT, check_layout, matrix_shape
from orthoptim.recipes.plan import (
    CLUSTER_KEY,
    LAYOUT_KEY,
    LR_SCALE_KEY,
    MOMENT_KEYS,
    Plan,
    Route,
    exposed_moments,
    group_layout,
    group_lr,
)
from orthoptim.routing import NOTE_KEY, is_named_parameters, route, route_named

GROUP_KEYS: frozenset[str] = frozenset(
    {
        "params",
        "param_names",
        "lr",
        LR_SCALE_KEY,
        LAYOUT_KEY,
        "weight_decay",
        "role",
        "route",
        "initial_lr",
        NOTE_KEY,
        CLUSTER_KEY,
        *MOMENT_KEYS,
    }
)


def names_of(group: Mapping[str, Any]) -> list[str]:
    """The group's parameter names, "" for each when it was built from bare tensors."""
    return group.get("param_names") or [""] * len(group["params"])


def number(value: float | Tensor) -> float:
    """A hyperparameter given as a number or a one-element tensor (torch accepts both)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"lr must be a number or a one-element tensor, got {value.shape}")
        return float(value.item())
    return value


def initial_groups(
    params: ParamsLike,
    plan: Plan,
    *,
    lr: float,
    weight_decay: float,
    overrides: Mapping[str, str] | None,
    head_names: Sequence[str],
    layouts: Mapping[str, str] | None,
    example_input: Any,
    reroutes: Mapping[str, str] | None,
) -> list[Any]:
    """What ``torch.optim.Optimizer.__init__`` gets: a model's or named parameters' groups
    routed by ``plan`` (``param_groups``), or the user's tensors or groups as they are."""
    items = params if isinstance(params, nn.Module) else list(cast(Iterable[Any], params))
    routing = None
    named_params: list[tuple[str, Tensor]] = []
    if isinstance(items, nn.Module):
        routing = route(items, overrides, head_names, layouts, example_input)
        named_params = list(items.named_parameters())
    elif is_named_parameters(items) and plan.needs_roles:
        if example_input is not None:
            raise ValueError("example_input traces a forward and needs the nn.Module")
        named_params = cast(list[tuple[str, Tensor]], items)
        routing = route_named(named_params, overrides, head_names, layouts)
    else:
        given = [k for k, v in (("overrides", overrides), ("layouts", layouts)) if v is not None]
        given += ["example_input"] if example_input is not None else []
        if given:
            raise ValueError(
                f"{', '.join(given)} route parameters of a model: pass the nn.Module "
                "(or model.named_parameters() for overrides and layouts)"
            )
    groups: list[Any]
    if routing is None:
        given_items = cast(list[Any], items)  # a module is always routed
        groups = (
            given_items
            if not given_items or isinstance(given_items[0], dict)
            else [{"params": given_items}]
        )
    else:
        groups = param_groups(
            named_params,
            routing.roles,
            plan,
            lr=lr,
            weight_decay=weight_decay,
            layouts=routing.layouts,
            reroutes=reroutes,
        )
    if not groups:
        raise ValueError("optimizer got an empty parameter list")
    return groups


def normalized(param_group: Any, existing: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of ``param_group`` with its keys checked, ``params`` a list of distinct tensors
    and ``param_names`` present exactly when ``existing`` groups have them (torch wants every
    group with names, or none)."""
    if not isinstance(param_group, dict):
        raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
    unknown = set(param_group) - GROUP_KEYS
    if unknown:
        raise ValueError(
            f"unknown param group keys {sorted(unknown)}; allowed: {sorted(GROUP_KEYS)}"
        )
    group = dict(param_group)
    params = group["params"]
    if isinstance(params, set):
        raise TypeError("params must be an ordered collection (a list), not a set")
    params = [params] if isinstance(params, Tensor) else list(params)
    if any(isinstance(x, tuple) for x in params):
        if not is_named_parameters(params):
            raise TypeError(
                "params must be all tensors or all (name, tensor) pairs, as "
                "model.named_parameters() gives"
            )
        group["param_names"] = [name for name, _ in params]
        params = [p for _, p in params]
    group["params"] = params
    if len({id(p) for p in params}) != len(params):
        first = {id(p): i for i, p in reversed(list(enumerate(params)))}
        twice = next(i for i, p in enumerate(params) if first[id(p)] != i)
        raise ValueError(
            f"parameter {names_of(group)[twice] or f'#{twice}'} appears twice in one param "
            "group: its update would be applied twice"
        )
    if existing:
        if "param_names" in existing[0]:
            group.setdefault("param_names", [""] * len(params))
        else:
            group.pop("param_names", None)
    return group


def route_of(plan: Plan, group: Mapping[str, Any]) -> Route:
    """The route a group names, or its role's; the plan's only route for bare tensors."""
    if "route" in group:
        try:
            return plan.route_named(group["route"])
        except KeyError as err:
            raise ValueError(str(err)) from None
    if group.get("role") is not None:
        return plan.route_for(group["role"])
    if plan.needs_roles:
        raise ValueError(
            f"this plan routes by role ({', '.join(r.name for r in plan.routes)}) and "
            "cannot route bare tensors: pass the nn.Module, or param groups with a 'role' key "
            "(hidden, embedding, head, vector)"
        )
    return plan.routes[0]


def configure(
    group: dict[str, Any], route: Route, defaults: Mapping[str, Any], moment_key: str | None
) -> None:
    """Fill in what the group does not set: its route, lr (a user's lr runs as it is, else the
    optimizer's with the route's ``lr_scale``), weight decay and live moments; then check them
    and every parameter against the route's chain."""
    group["route"] = route.name
    group.setdefault("role", None)
    if "lr" in group:
        group.setdefault(LR_SCALE_KEY, 1.0)  # the user's lr is this group's lr
    else:
        group["lr"] = defaults["lr"]
        group.setdefault(LR_SCALE_KEY, route.scale_at(defaults["lr"]))
    if route.weight_decay is not None:
        group.setdefault("weight_decay", route.weight_decay)
    if moment_key is not None and route.chain.moments:  # set before torch's __init__
        group.setdefault(moment_key, exposed_moments(route.chain, moment_key))
    check_finite_nonnegative("lr", number(group["lr"]))
    check_positive(LR_SCALE_KEY, group[LR_SCALE_KEY])
    layout = group_layout(group)
    check_finite_nonnegative("weight_decay", group.get("weight_decay", 0.0))
    for name, p in zip(names_of(group), group["params"], strict=True):
        if not isinstance(p, Tensor):
            raise TypeError(f"optimizer can only optimize tensors, got {type(p).__name__}")
        if not p.is_floating_point():
            raise TypeError(
                f"parameter {name or '<unnamed>'} has dtype {p.dtype}; orthoptim optimizes "
                "real floating-point tensors"
            )
        if p.ndim >= 2 or layout != DEFAULT_LAYOUT:
            check_layout(layout, tuple(p.shape), name)
        route.chain.validate(p, name)
    if CLUSTER_KEY in group:  # checked now, not at the first step
        route.chain.with_cluster(group[CLUSTER_KEY])


def with_grads(group: Mapping[str, Any]) -> list[tuple[str, Tensor]]:
    """The group's (name, parameter) pairs that have a gradient, checked before any update."""
    out = []
    for name, p in zip(names_of(group), group["params"], strict=True):
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            raise RuntimeError(f"parameter {name or '<unnamed>'}: sparse gradients unsupported")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise RuntimeError(
                f"parameter {name or '<unnamed>'}: gradient {tuple(g.shape)} {g.dtype} does "
                f"not match the parameter {tuple(p.shape)} {p.dtype}"
            )
        out.append((name, p))
    return out


def route_positions(groups: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, int]]:
    """``{id(p): (position, route size)}``: the index of each parameter's first matrix among
    its route's matrices, counted over the groups in order (a route's groups need not be
    adjacent; a stacked parameter's matrices count one each, as separate layers would), and how
    many matrices its route has (``Ctx.position``, ``Ctx.route_size``). Every rank holds the
    same groups, and a checkpoint loads into the same ones, so these agree across ranks and
    resumes."""
    members: dict[str, list[tuple[int, int]]] = {}
    for group in groups:
        layout = group_layout(group)
        ids = members.setdefault(group["route"], [])
        ids.extend((id(p), matrix_shape(tuple(p.shape), layout)[1]) for p in group["params"])
    out = {}
    for ids in members.values():
        size, position = sum(count for _, count in ids), 0
        for pid, count in ids:
            out[pid] = (position, size)
            position += count
    return out


def param_groups(
    named_params: Sequence[tuple[str, Tensor]],
    roles: Mapping[str, str],
    plan: Plan,
    *,
    lr: float,
    weight_decay: float,
    layouts: Mapping[str, str] | None = None,
    reroutes: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One torch param group per non-empty (role, layout, note), roles in the order of
    ``ROLES``.

    Each group is ``{"params", "param_names", "role", "layout", "route", "lr", "lr_scale",
    "weight_decay"}``: ``lr`` is the optimizer's (schedulers set it) and ``lr_scale`` the route's
    lr relative to it, so LR schedulers, per-group overrides and ``state_dict`` work unchanged.
    ``reroutes`` (``{name: reason}``) sends parameters that their role's route cannot update
    (a layer MKOR's hooks cannot see) to the plan's route for vectors, with the reason kept as
    the group's ``"note"`` (shown by ``describe``).
    """
    layouts, notes = layouts or {}, reroutes or {}
    groups = []
    for role in ROLES:
        members = [(n, p) for n, p in named_params if roles[n] == role]
        elsewhere = plan.route_for(role) is not plan.route_for("vector")
        reroutes = {n: notes[n] for n, _ in members if elsewhere and n in notes}
        keys = dict.fromkeys((layouts.get(n, DEFAULT_LAYOUT), reroutes.get(n)) for n, _ in members)
        for layout, note in keys:
            mine = [
                (n, p)
                for n, p in members
                if (layouts.get(n, DEFAULT_LAYOUT), reroutes.get(n)) == (layout, note)
            ]
            route = plan.route_for(role if note is None else "vector")
            wd = weight_decay if route.weight_decay is None else route.weight_decay
            group = {
                "params": [p for _, p in mine],
                "param_names": [n for n, _ in mine],
                "role": role,
                LAYOUT_KEY: layout,
                "route": route.name,
                "lr": lr,
                LR_SCALE_KEY: route.scale_at(lr),
                "weight_decay": wd,
            }
            if note is not None:
                group[NOTE_KEY] = note
            groups.append(group)
    return groups


def describe(
    groups: Sequence[Mapping[str, Any]], plan: Plan, owners: Mapping[int, int] | None = None
) -> str:
    """A text table of the routing: name, shape, role, route, chain, lr, weight decay, and with
    ``owners`` (``{id(p): rank}``, from a distributed step) the rank that computes each matrix
    step ("all": element-wise chains run on every rank or shard)."""
    header = ("parameter", "shape", "role", "route", "chain", "lr", "wd")
    rows: list[tuple[str, ...]] = [header + (("owner",) if owners is not None else ())]
    notes = list(dict.fromkeys(g[NOTE_KEY] for g in groups if g.get(NOTE_KEY)))
    for gi, group in enumerate(groups):
        chain = plan.route_named(group["route"]).chain
        summary = " > ".join(type(t).__name__ for t in chain.transforms) or "identity"
        names = group.get("param_names") or [f"group{gi}[{i}]" for i in range(len(group["params"]))]
        layout = group_layout(group)
        for name, p in zip(names, group["params"], strict=True):
            shape = "x".join(str(d) for d in p.shape) or "scalar"
            if layout != DEFAULT_LAYOUT:
                shape += f" ({layout})"
            rows.append(
                (
                    name,
                    shape,
                    str(group.get("role") or "-"),
                    group["route"]
                    + (f" [{notes.index(group[NOTE_KEY]) + 1}]" if group.get(NOTE_KEY) else ""),
                    summary,
                    f"{group_lr(group):.3g}",
                    f"{group['weight_decay']:.3g}",
                )
                + ((str(owners.get(id(p), "all")),) if owners is not None else ())
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"[{i}] not on its role's route: {note}" for i, note in enumerate(notes, 1)]
    lines += [f"lr rule: {rule}" for rule in plan.lr_rules]
    return "\n".join(lines)
