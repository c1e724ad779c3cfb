"""The closure section of ``orthoptim speed``: optimizers that need ``step(closure)`` timed as a
whole training step beside AdamW's, with their forward and backward passes counted by hooks (no
timing assertions: only what the section measures and writes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import orthoptim
from orthoptim import ChainOptimizer
from orthoptim.bench.speed import benchmark as speed
from orthoptim.bench.speed import closure
from orthoptim.recipes import estimated, sgd
from tests.optim.test_estimator import ForwardDifferences, ShiftedGradient

TINY = (8, 16, 4)


def test_passes_are_counted_per_step_for_exact_mars_and_psgd_hvp() -> None:
    chosen = [("mars_adamw", {"variant": "exact"}), ("psgd_kron", {"curvature": "hvp"})]
    adamw, rows = closure.run_section(chosen, warmup=1, steps=2, widths=TINY, batch=8)
    assert [r.error for r in [adamw, *rows]] == [None, None, None]
    mars, psgd = rows
    # AdamW: its own forward and backward, no closure.
    assert (adamw.forward, adamw.backward, adamw.closure_calls) == ([1, 1], [1, 1], [0, 0])
    # Exact MARS from its second step: the closure at the previous point and at the current one.
    assert (mars.forward, mars.backward, mars.closure_calls) == ([2, 2], [2, 2], [2, 2])
    # PSGD hvp: one forward, the closure's backward and the double backward of the products
    # (a probe every step while the update probability is 1, its first steps).
    assert (psgd.forward, psgd.backward, psgd.closure_calls) == ([1, 1], [2, 2], [1, 1])
    assert all(len(r.times_s) == 2 for r in [adamw, *rows])
    table = closure.render(adamw, rows, TINY)
    assert "mars_adamw(variant='exact')" in table and "psgd_kron(curvature='hvp')" in table


def test_closure_flags_follow_the_plan() -> None:
    model = closure.mlp(TINY)
    assert closure.closure_flags(orthoptim.build("psgd_kron", model, curvature="hvp")) == (
        True,
        True,
    )
    assert closure.closure_flags(orthoptim.build("mars_adamw", model, variant="exact")) == (
        False,
        True,
    )


@pytest.mark.parametrize(
    ("estimator", "passes"),
    [
        # the closure at the current point, then the gradient at the shifted one
        (ShiftedGradient(), ([2, 2], [2, 2], [2, 2])),
        # zeroth order: the closure's loss, then one closure call (under no_grad) per
        # coordinate (13 parameters), no backward
        (ForwardDifferences(), ([14, 14], [0, 0], [14, 14])),
    ],
    ids=["shifted_gradient", "forward_differences"],
)
def test_plan_level_estimators_are_counted(monkeypatch, estimator, passes) -> None:
    """Any plan with a gradient estimator is timed through the same closure: the passes come
    from the hooks, whatever the estimator does with the oracle."""

    def build(name, model, **options):
        if name == "adamw":
            return orthoptim.build("adamw", model)
        return ChainOptimizer(model.parameters(), estimated(sgd(), estimator), lr=0.01)

    monkeypatch.setattr(closure.registry, "build", build)
    adamw, (row,) = closure.run_section([("fake", {})], warmup=1, steps=2, widths=(2, 3, 1))
    assert adamw.error is None and row.error is None, row.error
    assert (row.forward, row.backward, row.closure_calls) == passes


def test_entrants_are_the_closure_users_and_variants_kept_by_spec() -> None:
    every = closure.closure_entrants()
    assert ("mars_adamw", {"variant": "exact"}) in every
    for name, options in every:
        assert orthoptim.registry.get(name).whole_model_plan(options).needs_closure
    assert closure.closure_entrants(["psgd_kron"]) == [("psgd_kron", {"curvature": "hvp"})]
    assert closure.closure_entrants(["adamw"]) == []


def test_a_failing_optimizer_keeps_its_error_and_the_rest_run() -> None:
    _adamw, rows = closure.run_section(
        [("mars_adamw", {"variant": "nope"}), ("mars_adamw", {"variant": "exact"})],
        warmup=0,
        steps=1,
        widths=TINY,
        batch=4,
    )
    assert rows[0].error is not None and "variant" in rows[0].error
    assert rows[1].error is None and rows[1].times_s


def test_speed_run_writes_the_closure_section(tmp_path: Path) -> None:
    lines: list[str] = []
    config = speed.SpeedConfig(
        shapes=((16, 8),),
        layers=1,
        adamw_extra=(),
        specs=("muon", "mars_adamw"),
        peers=False,
        warmup=1,
        steps=1,
        threads=1,
        out=tmp_path,
        rate_size=32,
        closure_widths=TINY,
    )
    speed.run(config, echo=lines.append)
    records = [json.loads(x) for x in (tmp_path / "closure.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == ["adamw", "mars_adamw(variant='exact')"]
    assert records[1]["forward_per_step"] == 2.0 and records[1]["ratio_adamw"] > 0
    assert any(line.startswith("closure optimizers") for line in lines)
