"""The peers ``orthoptim speed`` times: torch.optim, heavyball and pytorch-optimizer's Muon and
AdamW, each set to the registry's hyperparameters so every entrant runs the same algorithm."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from orthoptim import registry
from orthoptim.bench.shared.optional import version_of
from orthoptim.bench.shared.peers import Eager, heavyball, muon_defaults, only
from orthoptim.bench.speed.result import Entrant
from orthoptim.transforms import ScaleByAdam


def _muon_hyper() -> dict[str, Any]:
    """The registry ``muon``'s hyperparameters, so every peer runs the same algorithm."""
    d = muon_defaults()
    return {"lr": d.lr, "momentum": d.momentum, "nesterov": d.nesterov, "ns_steps": d.ns_steps}


def _adamw_hyper() -> dict[str, Any]:
    spec = registry.get("adamw")
    adam = only(spec.whole_model_plan().routes[0].chain, ScaleByAdam)
    return {"lr": spec.lr, "betas": adam.betas, "eps": adam.eps, "weight_decay": spec.weight_decay}


def torch_muon(params: list[torch.Tensor]) -> Any:
    h = _muon_hyper()
    return torch.optim.Muon(
        params,
        lr=h["lr"],
        weight_decay=0.0,
        momentum=h["momentum"],
        nesterov=h["nesterov"],
        ns_steps=h["ns_steps"],
        adjust_lr_fn="original",
    )


def torch_adamw(fused: bool) -> Callable[[list[torch.Tensor]], Any]:
    def make(params: list[torch.Tensor]) -> Any:
        h = _adamw_hyper()
        return torch.optim.AdamW(params, fused=fused, foreach=None if fused else True, **h)

    return make


def heavyball_muon(params: list[torch.Tensor]) -> Any:
    hb, utils = heavyball()
    h = _muon_hyper()
    opt = hb.Muon(
        params,
        lr=h["lr"],
        betas=(h["momentum"], 0.99),
        weight_decay=0.0,
        heavyball_momentum=True,
        nesterov=h["nesterov"],
        warmup_steps=0,
    )
    return Eager(opt, utils)


def heavyball_adamw(params: list[torch.Tensor]) -> Any:
    hb, utils = heavyball()
    h = _adamw_hyper()
    opt = hb.AdamW(
        params,
        lr=h["lr"],
        betas=h["betas"],
        eps=h["eps"],
        weight_decay=h["weight_decay"],
        warmup_steps=0,
    )
    return Eager(opt, utils)


def pytorch_optimizer_muon(params: list[torch.Tensor]) -> Any:
    po = importlib.import_module("pytorch_optimizer")
    h = _muon_hyper()
    return po.Muon(
        [{"params": params, "use_muon": True}],
        lr=h["lr"],
        momentum=h["momentum"],
        weight_decay=0.0,
        nesterov=h["nesterov"],
        ns_steps=h["ns_steps"],
        ns_coeffs="original",
        use_adjusted_lr=False,
    )


def entrants() -> list[Entrant]:
    """Every installed peer's Muon and AdamW (torch's fused and foreach AdamW always)."""
    out = []
    if hasattr(torch.optim, "Muon"):
        out.append(Entrant("torch:muon", "torch", "muon", False, torch_muon))
    out.append(Entrant("torch:adamw_fused", "torch", "adamw", True, torch_adamw(True)))
    out.append(Entrant("torch:adamw_foreach", "torch", "adamw", True, torch_adamw(False)))
    if version_of("heavyball") is not None:
        out.append(Entrant("heavyball:muon", "heavyball", "muon", False, heavyball_muon))
        out.append(Entrant("heavyball:adamw", "heavyball", "adamw", True, heavyball_adamw))
    if version_of("pytorch-optimizer") is not None:
        out.append(
            Entrant("pytorch_optimizer:muon", "pytorch-optimizer", "muon", False,
                    pytorch_optimizer_muon)
        )  # fmt: skip
    return out
