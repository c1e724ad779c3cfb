"""Routing over a zoo of real architectures (tiny random-init configs, no downloads).

For every model of ``tests.integrations.zoo``: the hand-written expectation is exhaustive,
``routing.classify`` (by names and types, and traced through one forward) gives every
parameter its expected role, ``routing.layouts`` every matrix its storage layout, and
``orthoptim.build("muon", model)`` puts each parameter in a group of its role and layout and
takes a finite step. Hugging Face and torchvision models are skipped where the package does not
import.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim import routing
from tests.integrations import zoo

NAMES = list(zoo.CASES)


@functools.cache
def _build(name: str) -> zoo.Built:
    return zoo.CASES[name].build()


def built(name: str) -> zoo.Built:
    """The zoo model ``name`` (built once per session; tests that change it take a copy)."""
    requires = zoo.CASES[name].requires
    if requires is not None:
        pytest.importorskip(requires)
    return _build(name)


def mismatches(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """One line per name whose value differs or that one side lacks."""
    return [
        f"{n}: got {got.get(n, '<missing>')!r}, expected {want.get(n, '<missing>')!r}"
        for n in sorted(set(got) | set(want))
        if got.get(n, "<missing>") != want.get(n, "<missing>")
    ]


@pytest.mark.parametrize("name", NAMES)
def test_expectation_is_exhaustive_and_well_formed(name: str) -> None:
    model, _, rules = built(name)
    zoo.check_rules(model, rules)
    roles = zoo.expected_roles(model, rules)
    layouts = zoo.expected_layouts(model, rules)
    embedding_weights = {
        id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    for n, p in model.named_parameters():
        big = zoo.dims_above_one(p)
        assert (roles[n] == "vector") == (big < 2), f"{n} {tuple(p.shape)} is {roles[n]}"
        if roles[n] == "embedding":
            # an embedding module's weight, or a free additive table (1, ..., S, D)
            assert id(p) in embedding_weights or (p.shape[0] == 1 and big >= 2), n
        else:
            assert id(p) not in embedding_weights, f"{n} is an nn.Embedding weight"
        if n in layouts and layouts[n].startswith("stacked_"):
            assert p.ndim == 3, f"{n}: a stacked layout needs (n, rows, cols), got {p.shape}"


@pytest.mark.parametrize("name", NAMES)
def test_classify_by_names_and_types(name: str) -> None:
    model, _, rules = built(name)
    diff = mismatches(routing.classify(model), zoo.expected_roles(model, rules))
    assert not diff, "\n".join(diff)


@pytest.mark.parametrize("name", NAMES)
def test_classify_traced(name: str) -> None:
    model, example_input, rules = built(name)
    got = routing.classify(model, example_input=example_input)
    diff = mismatches(got, zoo.expected_roles(model, rules))
    assert not diff, "\n".join(diff)


@pytest.mark.parametrize("name", NAMES)
def test_layouts(name: str) -> None:
    model, _, rules = built(name)
    want = zoo.expected_layouts(model, rules)
    got = routing.layouts(model)
    diff = mismatches({n: got[n] for n in want if n in got}, want)
    assert not diff, "\n".join(diff)


@pytest.mark.parametrize("name", NAMES)
def test_build_groups_by_role_and_layout_then_step(name: str) -> None:
    model, example_input, rules = built(name)
    model = copy.deepcopy(model)
    roles = zoo.expected_roles(model, rules)
    layouts = zoo.expected_layouts(model, rules)
    params = dict(model.named_parameters())
    name_of = {id(p): n for n, p in params.items()}

    opt = orthoptim.build("muon", model)

    placed: dict[str, tuple[str, str | None]] = {}
    for group in opt.param_groups:
        for key in ("role", "param_names", "layout"):
            assert key in group, f"param group without {key!r}: {sorted(group)}"
        assert len(group["param_names"]) == len(group["params"])
        for pname, p in zip(group["param_names"], group["params"], strict=True):
            assert name_of.get(id(p)) == pname, f"group names {pname!r} for another tensor"
            assert pname not in placed, f"{pname} is in two groups"
            placed[pname] = (group["role"], group["layout"])
    missing = [n for n, p in params.items() if p.requires_grad and n not in placed]
    assert not missing, f"parameters in no group: {missing}"
    wrong = [
        f"{n}: group {got}, expected role {roles[n]!r}"
        + (f" layout {layouts[n]!r}" if n in layouts else "")
        for n, got in placed.items()
        if got[0] != roles[n] or (n in layouts and got[1] != layouts[n])
    ]
    assert not wrong, "\n".join(wrong)

    table = opt.describe().splitlines()
    for n, layout in layouts.items():
        if layout != "out_in":
            rows = [line for line in table if line.split() and line.split()[0] == n]
            assert len(rows) == 1 and layout in rows[0], f"describe() row of {n}: {rows}"

    before = {n: p.detach().clone() for n, p in params.items()}
    opt.zero_grad(set_to_none=True)
    zoo.loss_of(zoo.run_forward(model, example_input)).backward()
    opt.step()
    for n, p in params.items():
        assert torch.isfinite(p).all(), f"{n} is not finite after one step"
        if p.grad is not None and p.grad.any():
            assert not torch.equal(p.detach(), before[n]), f"{n} has a gradient but did not move"
