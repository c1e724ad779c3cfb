"""Parameter routing: which role each parameter plays, and the param groups a plan makes of them.

Rules of ``classify``, first match wins:
  1. a user override: ``{glob: role}``, matched against the parameter name with ``fnmatch``;
  2. the weight of an ``nn.Embedding`` / ``nn.EmbeddingBag`` -> ``"embedding"`` (a head tied to an
     embedding is the same tensor, so it is routed once, as the embedding);
  3. a matrix of a module whose own name is in ``head_names`` -> ``"head"``; when no module has
     such a name, the weight of the last ``nn.Linear`` (in module order) is the head, which is
     the output layer of ``nn.Sequential`` stacks and of most classifiers;
  4. ``ndim >= 2`` -> ``"hidden"`` (conv kernels are orthogonalised as ``(out, in*kh*kw)``);
  5. everything else (biases, norm gains, scalars) -> ``"vector"``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from orthoptim._types import ROLES
from orthoptim.recipes.plan import LR_SCALE_KEY, Plan, group_lr

HEAD_NAMES: tuple[str, ...] = ("lm_head", "head", "classifier", "fc_out", "output")


def classify(
    model: nn.Module,
    overrides: Mapping[str, str] | None = None,
    head_names: Sequence[str] = HEAD_NAMES,
) -> dict[str, str]:
    """``{parameter name: role}`` for every parameter of ``model`` (see the module docstring)."""
    overrides = dict(overrides or {})
    for pattern, role in overrides.items():
        if role not in ROLES:
            raise ValueError(f"override {pattern!r}: role must be one of {ROLES}, got {role!r}")
    embedding_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    named_head = any(name.rsplit(".", 1)[-1] in head_names for name, _ in model.named_modules())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    last_linear = None if named_head or not linears else id(linears[-1].weight)
    unused = set(overrides)
    roles: dict[str, str] = {}
    for name, p in model.named_parameters():
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        matched = next((pat for pat in overrides if fnmatch.fnmatchcase(name, pat)), None)
        if matched is not None:
            unused.discard(matched)
            roles[name] = overrides[matched]
        elif id(p) in embedding_ids:
            roles[name] = "embedding"
        elif p.ndim >= 2 and (module_name.rsplit(".", 1)[-1] in head_names or id(p) == last_linear):
            roles[name] = "head"
        else:
            roles[name] = "hidden" if p.ndim >= 2 else "vector"
    if unused:
        raise ValueError(f"overrides matched no parameter: {sorted(unused)}")
    return roles


def param_groups(
    named_params: Sequence[tuple[str, Tensor]],
    roles: Mapping[str, str],
    plan: Plan,
    *,
    lr: float,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """One torch param group per non-empty role, in the order of ``ROLES``.

    Each group is ``{"params", "param_names", "role", "route", "lr", "lr_scale",
    "weight_decay"}``: ``lr`` is the optimizer's (schedulers set it) and ``lr_scale`` the route's
    lr relative to it, so LR schedulers, per-group overrides and ``state_dict`` work unchanged.
    """
    groups = []
    for role in ROLES:
        members = [(n, p) for n, p in named_params if roles[n] == role]
        if not members:
            continue
        route = plan.route_for(role)
        groups.append(
            {
                "params": [p for _, p in members],
                "param_names": [n for n, _ in members],
                "role": role,
                "route": route.name,
                "lr": lr,
                LR_SCALE_KEY: route.scale_at(lr),
                "weight_decay": weight_decay if route.weight_decay is None else route.weight_decay,
            }
        )
    return groups


def describe(
    groups: Sequence[Mapping[str, Any]], plan: Plan, owners: Mapping[int, int] | None = None
) -> str:
    """A text table of the routing: name, shape, role, route, chain, lr, weight decay, and with
    ``owners`` (``{id(p): rank}``, from a distributed step) the rank that computes each matrix
    step ("all": element-wise chains run on every rank or shard)."""
    header = ("parameter", "shape", "role", "route", "chain", "lr", "wd")
    rows: list[tuple[str, ...]] = [header + (("owner",) if owners is not None else ())]
    for gi, group in enumerate(groups):
        chain = plan.route_named(group["route"]).chain
        summary = " > ".join(type(t).__name__ for t in chain.transforms) or "identity"
        names = group.get("param_names") or [f"group{gi}[{i}]" for i in range(len(group["params"]))]
        for name, p in zip(names, group["params"], strict=True):
            shape = "x".join(str(d) for d in p.shape) or "scalar"
            rows.append(
                (
                    name,
                    shape,
                    str(group.get("role") or "-"),
                    group["route"],
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
    return "\n".join(lines)
