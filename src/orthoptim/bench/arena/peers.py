"""Peers: other libraries' implementations of the algorithms we race, side by side.

Each peer is configured from our registry
defaults where the library can express them (read from the spec's plan, so they follow changes
to the recipe); what a peer cannot express is stated in its configuration record:

* ``torch:adamw_fused`` -- ``torch.optim.AdamW(fused=True)``, mirrors ``adamw``.
* ``torch:muon`` -- ``torch.optim.Muon`` on hidden matrices + ``torch.optim.AdamW`` on the rest
  (2-D hidden matrices only), mirrors ``muon``.
* ``heavyball:muon`` / ``heavyball:adamw`` -- heavyball's ``Muon`` + ``AdamW``, run eagerly
  (``heavyball.utils.compile_mode = None`` during their calls, as orthoptim runs eagerly).
* ``pytorch_optimizer:muon`` -- pytorch-optimizer's ``Muon`` with its built-in AdamW for
  ``use_muon=False`` groups. (Its ``AdamW`` is ``torch.optim.AdamW`` re-exported, so it does not
  race twice.)

Every peer routes parameters with ``orthoptim.routing.classify``, as our plans do. The Muon
peers' AdamW is built at the lr the race gives the AdamW route of every plan (``make(model, lr,
adamw_lr)``; with ``adamw_lr=None``, ``muon``'s default ratio of ``lr``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from orthoptim import registry
from orthoptim.bench.arena.racers import Make, Pair, Racer
from orthoptim.bench.shared.optional import version_of
from orthoptim.bench.shared.peers import Eager, MuonDefaults, heavyball, muon_defaults, only
from orthoptim.functional.coefficients import PRESETS
from orthoptim.routing import classify
from orthoptim.transforms import ScaleByAdam


def split_hidden(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices, everything else), by orthoptim's routing rules."""
    roles = classify(model)
    hidden = [p for n, p in model.named_parameters() if roles[n] == "hidden"]
    rest = [p for n, p in model.named_parameters() if roles[n] != "hidden"]
    return hidden, rest


def _adamw_lr(d: MuonDefaults, lr: float, adamw_lr: float | None) -> float:
    """The AdamW route's lr: the race's absolute choice, or Muon's default ratio of ``lr``."""
    return lr * d.adamw_lr_scale if adamw_lr is None else adamw_lr


def _torch_adamw(model: nn.Module, lr: float, adamw_lr: float | None = None) -> Any:
    spec = registry.get("adamw")
    adam = only(spec.whole_model_plan().routes[0].chain, ScaleByAdam)
    return torch.optim.AdamW(
        model.parameters(),
        lr=lr,
        betas=adam.betas,
        eps=adam.eps,
        weight_decay=spec.weight_decay,
        fused=True,
    )


def _torch_muon(model: nn.Module, lr: float, adamw_lr: float | None = None) -> Any:
    d = muon_defaults()
    hidden, rest = split_hidden(model)
    if any(p.ndim != 2 for p in hidden):
        raise ValueError("torch.optim.Muon takes 2-D parameters only; this model has conv kernels")
    triples = PRESETS[d.coeffs].triples
    if len(triples) != 1 or PRESETS[d.coeffs].norm_safety != 1.0:
        raise ValueError(f"torch.optim.Muon has one fixed NS triple; muon uses {d.coeffs!r}")
    adjust = {"keller": "original", "moonlight_rms": "match_rms_adamw"}.get(d.shape_rule)
    if adjust is None:
        raise ValueError(f"torch.optim.Muon has no shape rule {d.shape_rule!r}")
    opts: list[torch.optim.Optimizer] = []
    if hidden:
        opts.append(
            torch.optim.Muon(
                hidden,
                lr=lr,
                weight_decay=d.weight_decay,
                momentum=d.momentum,
                nesterov=d.nesterov,
                ns_coefficients=triples[0],
                ns_steps=d.ns_steps,
                adjust_lr_fn=adjust,
            )
        )
    if rest:
        opts.append(
            torch.optim.AdamW(
                rest,
                lr=_adamw_lr(d, lr, adamw_lr),
                betas=d.adamw_betas,
                eps=d.adamw_eps,
                weight_decay=d.adamw_weight_decay,
            )
        )
    return Pair(*opts)


def _heavyball_muon(model: nn.Module, lr: float, adamw_lr: float | None = None) -> Any:
    hb, utils = heavyball()
    d = muon_defaults()
    if d.shape_rule != "keller":
        raise ValueError(f"heavyball's Muon has only the Keller shape scale, not {d.shape_rule}")
    hidden, rest = split_hidden(model)
    opts = []
    if hidden:
        # heavyball_momentum=True is m = beta m + g, ours times 1/(1-beta): the same after NS.
        muon = hb.Muon(
            hidden,
            lr=lr,
            betas=(d.momentum, 0.99),
            weight_decay=d.weight_decay,
            heavyball_momentum=True,
            nesterov=d.nesterov,
            warmup_steps=0,
        )
        opts.append(Eager(muon, utils))
    if rest:
        adamw = hb.AdamW(
            rest,
            lr=_adamw_lr(d, lr, adamw_lr),
            betas=d.adamw_betas,
            eps=d.adamw_eps,
            weight_decay=d.adamw_weight_decay,
            warmup_steps=0,
        )
        opts.append(Eager(adamw, utils))
    return Pair(*opts)


def _heavyball_adamw(model: nn.Module, lr: float, adamw_lr: float | None = None) -> Any:
    hb, utils = heavyball()
    spec = registry.get("adamw")
    adam = only(spec.whole_model_plan().routes[0].chain, ScaleByAdam)
    opt = hb.AdamW(
        model.parameters(),
        lr=lr,
        betas=adam.betas,
        eps=adam.eps,
        weight_decay=spec.weight_decay,
        warmup_steps=0,
    )
    return Eager(opt, utils)


def _pytorch_optimizer_muon(model: nn.Module, lr: float, adamw_lr: float | None = None) -> Any:
    po = importlib.import_module("pytorch_optimizer")
    d = muon_defaults()
    coeffs = {"keller_quintic": "original"}.get(d.coeffs)
    adjusted = {"keller": False, "moonlight_rms": True}.get(d.shape_rule)
    if coeffs is None or adjusted is None:
        raise ValueError(f"pytorch-optimizer's Muon cannot express {d.coeffs}/{d.shape_rule}")
    hidden, rest = split_hidden(model)
    groups = [{"params": hidden, "use_muon": True}, {"params": rest, "use_muon": False}]
    return po.Muon(
        [g for g in groups if g["params"]],
        lr=lr,
        momentum=d.momentum,
        weight_decay=d.weight_decay,
        nesterov=d.nesterov,
        ns_steps=d.ns_steps,
        ns_coeffs=coeffs,
        use_adjusted_lr=adjusted,
        adamw_lr=_adamw_lr(d, lr, adamw_lr),
        adamw_betas=d.adamw_betas,
        adamw_wd=d.adamw_weight_decay,
        adamw_eps=d.adamw_eps,
    )


_PEERS: tuple[tuple[str, str, str, Make], ...] = (
    # (name, distribution, mirrors, make)
    ("torch:adamw_fused", "torch", "adamw", _torch_adamw),
    ("torch:muon", "torch", "muon", _torch_muon),
    ("heavyball:adamw", "heavyball", "adamw", _heavyball_adamw),
    ("heavyball:muon", "heavyball", "muon", _heavyball_muon),
    ("pytorch_optimizer:muon", "pytorch-optimizer", "muon", _pytorch_optimizer_muon),
)


def peer_racers(mirrored: Sequence[str]) -> tuple[list[Racer], list[str]]:
    """Installed peers of the algorithms in ``mirrored``, and notes on the ones left out."""
    racers, notes = [], []
    for name, dist, mirrors, make in _PEERS:
        if mirrors not in mirrored:
            continue
        version = version_of(dist)
        if version is None:
            notes.append(f"{name}: {dist} not installed (pip install -e '.[reference]')")
            continue
        racers.append(
            Racer(
                name=name,
                lr=registry.get(mirrors).lr,
                peer=True,
                library=f"{dist} {version}",
                mirrors=mirrors,
                make=make,
                adamw_lr_scale=muon_defaults().adamw_lr_scale if mirrors == "muon" else None,
            )
        )
    if version_of("pytorch-optimizer") is not None and "adamw" in mirrored:
        po = importlib.import_module("pytorch_optimizer")
        if po.AdamW is torch.optim.AdamW:
            notes.append("pytorch_optimizer:adamw is torch.optim.AdamW itself; not raced twice")
    return racers, notes
