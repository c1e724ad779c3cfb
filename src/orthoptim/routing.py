"""Parameter routing: each parameter's role and matrix layout (``groups`` turns them into param
groups).

Roles (``classify``), first match wins:
  1. a user override: ``{glob: role}``, matched against the parameter name with ``fnmatch``;
  2. the weight of an ``nn.Embedding`` / ``nn.EmbeddingBag`` -> ``"embedding"`` (a head tied to
     an embedding is the same tensor, so it is routed once, as the embedding);
  3. a head -> ``"head"``: with ``example_input``, the weights of the matrix products that
     produce the output, found by one traced forward (``model_trace``); without it, the last
     matrix layer of each module named in ``head_names`` that is not inside a repeated block
     (``classifier.out_proj`` of a classification head module, ``lm_head``, ``cls``'s decoder),
     and when there is none, the layer that ends the network by shapes (``named_heads``);
  4. fewer than two dimensions larger than 1 -> ``"vector"`` (biases, norm gains, scalars,
     ``cls_token`` (1, 1, d), weight norm's magnitude (out, 1));
  5. a table that is not a layer's weight -> ``"embedding"``: a bare parameter used as a lookup
     table or added to activations (traced), or without a trace one with a leading broadcast
     dimension of 1 (``position_embeddings`` (1, n, d));
  6. everything else -> ``"hidden"`` (conv kernels are updated as their ``(out, in*kh*kw)``
     matrix).
A parametrized weight (``torch.nn.utils.parametrize``: ``weight_norm``, ``orthogonal``) is
routed through its originals, each by its own shape, as part of the layer it parametrizes.

Layouts (``layouts``): how a weight stores its matrix (``functional.layout``): ``"in_out"`` for
Hugging Face ``Conv1D`` and ``nn.ConvTranspose*d``, stacked for mixture-of-experts weights, a
module's own declaration (``orthoptim_layouts = {"weight": "in_out"}`` on its class), the traced
use of a bare parameter (``x @ W``), ``"out_in"`` otherwise; overridable per parameter.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from torch import Tensor, nn

from orthoptim._types import ROLES
from orthoptim.functional.layout import DEFAULT_LAYOUT, LAYOUTS, check_layout
from orthoptim.model_trace import Trace, trace
from orthoptim.transforms.capture import CONVS, is_dense, is_hf_conv1d

HEAD_NAMES: tuple[str, ...] = (
    "lm_head",
    "head",
    "heads",
    "classifier",
    "cls",
    "score",
    "fc_out",
    "output",
    "proj_out",
    "qa_outputs",
    "text_projection",
    "visual_projection",
)
"""Module names that mark a model's output layer (a container: its last matrix layer)."""

NOTE_KEY = "note"
"""A param group's reason for a route other than its role's (``param_groups``'s ``reroutes``)."""

LAYOUT_DECLARATION = "orthoptim_layouts"
"""A module class attribute ``{own parameter name: layout}`` declaring non-standard layouts."""


@dataclass(frozen=True)
class Owner:
    """The layer a parameter belongs to: its module, name, and the parameter's name there."""

    module: nn.Module
    module_name: str
    attribute: str


def param_owners(model: nn.Module) -> dict[str, Owner]:
    """``{parameter name: Owner}``, seeing through parametrizations: ``0.parametrizations.weight
    .original1`` belongs to module ``0`` as its ``weight``."""
    modules = dict(model.named_modules())
    out = {}
    for name, _ in model.named_parameters():
        module_name, _, attribute = name.rpartition(".")
        if ".parametrizations." in f".{name}":
            head, _, rest = f".{name}".partition(".parametrizations.")
            module_name, attribute = head[1:], rest.split(".", 1)[0]
        out[name] = Owner(modules[module_name], module_name, attribute)
    return out


def _layer_layout(owner: Owner, p: Tensor) -> str | None:
    """The layout the owning layer's type gives ``p``; ``None`` when it is not a known layer's
    weight."""
    m, attribute = owner.module, owner.attribute
    declared = getattr(type(m), LAYOUT_DECLARATION, None)
    if isinstance(declared, Mapping) and attribute in declared:
        return str(declared[attribute])
    if attribute == "weight" and is_hf_conv1d(m):
        return "in_out"
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "in_out" if attribute == "weight" else None
    if isinstance(m, (nn.Linear, nn.Bilinear, *CONVS)):
        return DEFAULT_LAYOUT if attribute == "weight" else None
    if isinstance(m, (nn.MultiheadAttention, nn.RNNBase)):
        return DEFAULT_LAYOUT if "weight" in attribute else None
    if p.ndim == 3 and isinstance(getattr(m, "num_experts", None), int):
        # Hugging Face mixture-of-experts modules: (experts, out, in), or (experts, in, out)
        # where they set ``is_transposed``.
        return "stacked_in_out" if getattr(m, "is_transposed", False) else "stacked_out_in"
    return None


def _matrix_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if is_dense(m) or isinstance(m, CONVS)]


def _in_block(name: str, modules: Mapping[str, nn.Module]) -> bool:
    """Whether module ``name`` lies inside a repeated block: an indexed child that is a block of
    layers (``encoder.layer.3.output``), not an indexed layer of a ``Sequential`` (``2``)."""
    parts = name.split(".")
    return any(
        part.isdigit() and len(list(modules[".".join(parts[: i + 1])].children())) > 0
        for i, part in enumerate(parts[:-1])
    )


def _features(m: nn.Module) -> tuple[int, int]:
    """``(in, out)`` features of a matrix layer."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, CONVS):
        return m.in_channels, m.out_channels
    weight = cast(Tensor, m.weight)
    return int(weight.shape[0]), int(weight.shape[1])  # Hugging Face Conv1D: (in, out)


def named_heads(model: nn.Module, head_names: Sequence[str] = HEAD_NAMES) -> set[int]:
    """Without a trace: ``id`` of the head weights by module names, types and shapes (rule 3).

    The last matrix layer of each module named in ``head_names`` outside a repeated block; with
    none, the last ``Linear`` outside a repeated block whose output no matrix layer could take
    as input (the layer that ends the network, wherever it is declared); with none of those,
    no head when the model has an embedding table (its logits are computed from the table, a
    tied head), else the last ``Linear``.
    """
    modules = dict(model.named_modules())
    layers = _matrix_layers(model)
    heads: set[int] = set()
    for name in modules:
        if not name or name.rsplit(".", 1)[-1] not in head_names or _in_block(name, modules):
            continue
        inside = [m for n, m in layers if n == name or n.startswith(name + ".")]
        if inside:
            heads.add(id(inside[-1].weight))
    if heads:
        return heads
    linears = [(n, m) for n, m in layers if is_dense(m)]
    inputs = {_features(m)[0] for _, m in layers}
    sinks = [m for n, m in linears if _features(m)[1] not in inputs and not _in_block(n, modules)]
    if sinks:
        return {id(sinks[-1].weight)}
    tables = any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in modules.values())
    return {id(linears[-1][1].weight)} if linears and not tables else set()


def is_named_parameters(items: Sequence[Any]) -> bool:
    """Whether ``items`` is ``model.named_parameters()`` output: ``(name, tensor)`` pairs."""
    return bool(items) and all(
        isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items
    )


def _larger_than_one(p: Tensor) -> int:
    return sum(1 for d in p.shape if d > 1)


def classify(
    model: nn.Module,
    overrides: Mapping[str, str] | None = None,
    head_names: Sequence[str] = HEAD_NAMES,
    example_input: Any = None,
) -> dict[str, str]:
    """``{parameter name: role}`` for every parameter of ``model`` (see the module docstring).

    ``example_input``: what ``model(...)`` takes (a tensor, a tuple of positional arguments or a
    mapping of keyword arguments, such as a tokenizer's output); with it, heads and bare tables
    are found by one traced forward instead of by names.
    """
    return _classify(model, overrides, head_names, _trace_of(model, example_input))


def _trace_of(model: nn.Module, example_input: Any) -> Trace | None:
    return None if example_input is None else trace(model, example_input)


def _check_overrides(
    overrides: Mapping[str, str], allowed: Sequence[str], names: Sequence[str], what: str
) -> None:
    for pattern, value in overrides.items():
        if value not in allowed:
            kind = "role" if what == "override" else "layout"
            raise ValueError(
                f"{what} {pattern!r}: {kind} must be one of {tuple(allowed)}, got {value!r}"
            )
    unused = [pat for pat in overrides if not any(fnmatch.fnmatchcase(n, pat) for n in names)]
    if unused:
        close = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"{what}s matched no parameter: {sorted(unused)} (parameters: {close})")


def _classify(
    model: nn.Module,
    overrides: Mapping[str, str] | None,
    head_names: Sequence[str],
    traced: Trace | None,
) -> dict[str, str]:
    overrides = dict(overrides or {})
    named = list(model.named_parameters())
    _check_overrides(overrides, ROLES, [n for n, _ in named], "override")
    embedding_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    heads = named_heads(model, head_names) if traced is None else traced.heads
    owner_of = param_owners(model)
    roles: dict[str, str] = {}
    for name, p in named:
        matched = next((pat for pat in overrides if fnmatch.fnmatchcase(name, pat)), None)
        usage = None if traced is None else traced.usage_of(p)
        if matched is not None:
            roles[name] = overrides[matched]
        elif id(p) in embedding_ids or (usage is not None and usage.lookup):
            roles[name] = "embedding"
        elif id(p) in heads and p.ndim >= 2:
            roles[name] = "head"
        elif _larger_than_one(p) < 2:
            roles[name] = "vector"
        elif _layer_layout(owner_of[name], p) is not None:
            roles[name] = "hidden"
        elif usage is not None:
            roles[name] = "hidden" if usage.matmul_layout else "embedding"
        else:
            roles[name] = "embedding" if p.ndim >= 3 and p.shape[0] == 1 else "hidden"
    return roles


def layouts(
    model: nn.Module,
    overrides: Mapping[str, str] | None = None,
    example_input: Any = None,
) -> dict[str, str]:
    """``{parameter name: layout}`` for every parameter with at least two dimensions (see the
    module docstring); ``overrides`` is ``{glob: layout}``."""
    return _layouts(model, overrides, _trace_of(model, example_input))


def _layouts(
    model: nn.Module, overrides: Mapping[str, str] | None, traced: Trace | None
) -> dict[str, str]:
    overrides = dict(overrides or {})
    named = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]
    _check_overrides(overrides, LAYOUTS, [n for n, _ in named], "layout override")
    owner_of = param_owners(model)
    out = {}
    for name, p in named:
        matched = next((pat for pat in overrides if fnmatch.fnmatchcase(name, pat)), None)
        usage = None if traced is None else traced.usage_of(p)
        if matched is not None:
            layout = overrides[matched]
        else:
            layout = (
                _layer_layout(owner_of[name], p)
                or (usage.matmul_layout if usage is not None else None)
                or DEFAULT_LAYOUT
            )
        check_layout(layout, tuple(p.shape), name)
        out[name] = layout
    return out


@dataclass(frozen=True)
class Routing:
    """A model's routing: each parameter's role and layout."""

    roles: dict[str, str]
    layouts: dict[str, str]


def _named_role(name: str, p: Tensor, head_names: Sequence[str]) -> str:
    parts = name.split(".")[:-1]
    if any("emb" in part or part in ("wte", "wpe") for part in parts):
        return "embedding"
    in_block = any(x.isdigit() for x in parts)
    if p.ndim >= 2 and not in_block and any(part in head_names for part in parts):
        return "head"
    return "vector" if _larger_than_one(p) < 2 else "hidden"


def route_named(
    named_params: Sequence[tuple[str, Tensor]],
    overrides: Mapping[str, str] | None = None,
    head_names: Sequence[str] = HEAD_NAMES,
    layout_overrides: Mapping[str, str] | None = None,
) -> Routing:
    """Routing of ``model.named_parameters()`` output, without the model: roles by names and
    shapes (a module path with ``emb``, ``wte`` or ``wpe``: embedding; a head name outside a
    repeated block: head; fewer than two dimensions larger than 1: vector; else hidden) and
    layouts from ``layout_overrides`` only (pass the model to detect ``Conv1D`` and the like)."""
    overrides, layout_overrides = dict(overrides or {}), dict(layout_overrides or {})
    names = [n for n, _ in named_params]
    _check_overrides(overrides, ROLES, names, "override")
    _check_overrides(
        layout_overrides, LAYOUTS, [n for n, p in named_params if p.ndim >= 2], "layout override"
    )
    roles, layouts_ = {}, {}
    for name, p in named_params:
        role = next((r for pat, r in overrides.items() if fnmatch.fnmatchcase(name, pat)), None)
        roles[name] = role or _named_role(name, p, head_names)
        if p.ndim >= 2:
            layout = next(
                (v for pat, v in layout_overrides.items() if fnmatch.fnmatchcase(name, pat)),
                DEFAULT_LAYOUT,
            )
            check_layout(layout, tuple(p.shape), name)
            layouts_[name] = layout
    return Routing(roles, layouts_)


def route(
    model: nn.Module,
    overrides: Mapping[str, str] | None = None,
    head_names: Sequence[str] = HEAD_NAMES,
    layout_overrides: Mapping[str, str] | None = None,
    example_input: Any = None,
) -> Routing:
    """Roles and layouts together, from at most one traced forward."""
    traced = _trace_of(model, example_input)
    return Routing(
        _classify(model, overrides, head_names, traced),
        _layouts(model, layout_overrides, traced),
    )
