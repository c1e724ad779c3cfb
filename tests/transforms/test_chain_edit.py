"""``Chain.insert`` and ``Chain.replace``: editing a built chain by its transforms' state keys."""

from __future__ import annotations

import pytest

from orthoptim.transforms import (
    AddWeightDecay,
    CautiousMask,
    Momentum,
    Orthogonalize,
    ScaleByAdam,
    ScaleByShape,
    chain,
)


def keys(c) -> list[str]:
    return list(c.prefixes)


def test_insert_after_a_key() -> None:
    c = chain(Momentum(beta=0.5), Orthogonalize(), AddWeightDecay())
    out = c.insert(CautiousMask(), after="momentum")
    assert keys(out) == ["momentum", "cautious", "orthogonalize", "weight_decay"]
    assert keys(c.insert(CautiousMask(), after="weight_decay"))[-1] == "cautious"
    assert keys(c) == ["momentum", "orthogonalize", "weight_decay"]  # c itself is unchanged


def test_insert_a_chain_flattens_it() -> None:
    c = chain(Momentum(), AddWeightDecay()).insert(
        chain(Orthogonalize(), ScaleByShape()), after="momentum"
    )
    assert keys(c) == ["momentum", "orthogonalize", "shape_scale", "weight_decay"]


def test_insert_names_the_keys_when_absent() -> None:
    with pytest.raises(ValueError, match=r"after must be the key .*\['adam', 'weight_decay'\]"):
        chain(ScaleByAdam(), AddWeightDecay()).insert(CautiousMask(), after="momentum")


def test_a_shared_key_is_ambiguous_its_state_keys_are_not() -> None:
    c = chain(Momentum(beta=0.5), Momentum(beta=0.9), AddWeightDecay())
    with pytest.raises(ValueError, match=r"ambiguous.*'momentum', 'momentum#2'"):
        c.insert(CautiousMask(), after="momentum")
    second = c.insert(CautiousMask(), after="momentum#2")
    assert keys(second) == ["momentum", "momentum#2", "cautious", "weight_decay"]
    first = c.insert(CautiousMask(), after="momentum#1")
    assert keys(first) == ["momentum", "cautious", "momentum#2", "weight_decay"]


def test_replace() -> None:
    c = chain(Momentum(beta=0.5), Orthogonalize(), AddWeightDecay())
    out = c.replace("orthogonalize", Orthogonalize(ns_steps=3))
    assert out.transforms[1] == Orthogonalize(ns_steps=3)
    assert out.transforms[0] is c.transforms[0] and len(out.transforms) == 3
    with pytest.raises(ValueError, match="key must be the key of a transform"):
        c.replace("adam", ScaleByAdam())
