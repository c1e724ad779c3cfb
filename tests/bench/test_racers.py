"""Who races: every registry spec (deduplicated), AdamW always, and peers configured from our
registry defaults."""

from __future__ import annotations

import pytest
import torch

from orthoptim import registry
from orthoptim.bench.arena import tasks
from orthoptim.bench.arena.peers import peer_racers, split_hidden
from orthoptim.bench.arena.racers import BASELINE, configuration, spec_racers
from orthoptim.bench.models import TinyGPT
from orthoptim.bench.shared.peers import muon_defaults


def test_every_registry_spec_races_or_is_an_alias() -> None:
    racers, aliases = spec_racers(None)
    names = [r.name for r in racers]
    assert set(names) | set(aliases) == set(registry.names())
    for alias, kept in aliases.items():
        a, k = registry.get(alias), registry.get(kept)
        assert repr(a.whole_model_plan()) == repr(k.whole_model_plan())
        assert (a.lr, a.weight_decay) == (k.lr, k.weight_decay)
    for r in racers:
        assert not r.peer and r.lr == registry.get(r.name).lr
        assert r.has_adamw_route == (registry.get(r.name).adamw is not None)


def test_adamw_always_races_as_baseline() -> None:
    racers, _ = spec_racers(["muon"])
    assert [r.name for r in racers] == [BASELINE, "muon"]
    with pytest.raises(KeyError, match="did you mean"):
        spec_racers(["muonn"])


def test_peers_mirror_registry_defaults() -> None:
    d = muon_defaults()
    spec = registry.get("muon")
    assert d.lr == spec.lr
    racers, notes = peer_racers(["adamw", "muon"])
    for r in racers:
        assert r.peer and r.lr == registry.get(r.mirrors).lr
    assert any(r.name == "torch:adamw_fused" for r in racers)  # torch is always installed
    assert all(isinstance(n, str) for n in notes)


def test_torch_peers_build_with_the_same_routing_as_our_plan() -> None:
    racers = {r.name: r for r in peer_racers(["adamw", "muon"])[0]}
    model = TinyGPT(dim=16, depth=1, context=8)
    hidden, rest = split_hidden(model)
    assert racers["torch:muon"].has_adamw_route and not racers["torch:adamw_fused"].has_adamw_route
    opt = racers["torch:muon"].make(model, 0.02, None)  # the family ratio
    config = configuration(opt)
    assert [c["class"].rsplit(".", 1)[1] for c in config] == ["Muon", "AdamW"]
    assert config[0]["groups"][0]["n_tensors"] == len(hidden)
    assert config[1]["groups"][0]["lr"] == pytest.approx(0.02 * muon_defaults().adamw_lr_scale)
    config = configuration(racers["torch:muon"].make(model, 0.02, 8e-3))  # the race's choice
    assert config[1]["groups"][0]["lr"] == pytest.approx(8e-3)
    fused = configuration(racers["torch:adamw_fused"].make(model, 1e-3, None))[0]["groups"][0]
    assert fused["fused"] is True and fused["n_tensors"] == len(hidden) + len(rest)


def test_torch_muon_refuses_conv_kernels() -> None:
    pytest.importorskip("sklearn")
    racers = {r.name: r for r in peer_racers(["muon"])[0]}
    with pytest.raises(ValueError, match="2-D"):
        racers["torch:muon"].make(tasks.make("digits", quick=True).model(0), 0.02, None)


@pytest.mark.parametrize("name", ["heavyball:muon", "pytorch_optimizer:muon", "heavyball:adamw"])
def test_package_peers_step_when_installed(name: str) -> None:
    racers = {r.name: r for r in peer_racers(["adamw", "muon"])[0]}
    if name not in racers:
        pytest.skip(f"{name.split(':')[0]} is not installed")
    model = TinyGPT(dim=16, depth=1, context=8)
    before = [p.detach().clone() for p in model.parameters()]
    opt = racers[name].make(model, racers[name].lr, 1e-3 if racers[name].has_adamw_route else None)
    x = torch.randint(0, 256, (2, 8))
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    opt.step()
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    assert all(changed)
