"""The lr grid and the pick rule: the two things that make the comparison fair."""

from __future__ import annotations

import itertools
import math

import pytest

from orthoptim.bench.arena.protocol import lr_factors
from orthoptim.bench.arena.selection import final_value, pick
from tests.bench.synthetic import record


@pytest.mark.parametrize("points", [1, 2, 3, 5, 7])
def test_lr_factors_are_log_spaced_and_symmetric(points: int) -> None:
    factors = lr_factors(points, 8.0)
    assert len(factors) == points
    logs = [math.log(f) for f in factors]
    assert logs == sorted(logs)
    for a, b in zip(logs, reversed(logs), strict=True):
        assert a == pytest.approx(-b)
    if points > 1:
        assert factors[0] == pytest.approx(1 / 8) and factors[-1] == pytest.approx(8)
        gaps = [b - a for a, b in itertools.pairwise(logs)]
        assert gaps == pytest.approx([gaps[0]] * len(gaps))
    if points % 2:
        assert 1.0 in [pytest.approx(f) for f in factors]


def test_lr_factors_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        lr_factors(0, 8)
    with pytest.raises(ValueError, match="span"):
        lr_factors(3, 0.5)


def test_pick_takes_the_lowest_final_metric() -> None:
    sweep = [record("a", factor=f, final=v) for f, v in ((0.5, 0.7), (1.0, 0.6), (2.0, 0.4))]
    assert pick(sweep, "val_loss")["lr_factor"] == 2.0


def test_pick_ranks_diverged_runs_last_and_breaks_ties_toward_the_default() -> None:
    sweep = [
        record("a", factor=0.25, final=0.5),
        record("a", factor=2.0, final=0.5),
        record("a", factor=8.0, final=None, diverged=True),
    ]
    assert pick(sweep, "val_loss")["lr_factor"] == 2.0  # |log 2| < |log 0.25|
    assert final_value(sweep[2], "val_loss") == math.inf
    with pytest.raises(ValueError):
        pick([], "val_loss")


def test_a_failed_run_is_never_picked() -> None:
    failed = record("a", factor=1.0, final=0.1) | {"error": "RuntimeError: boom"}
    assert pick([failed, record("a", factor=2.0, final=0.9)], "val_loss")["lr_factor"] == 2.0


def test_data_needs_exactly_one_real_task(tmp_path) -> None:
    from orthoptim.bench.arena.protocol import RaceConfig
    from orthoptim.bench.arena.sweep import _make_tasks

    text = tmp_path / "t.txt"
    text.write_text("hello world " * 100)
    with pytest.raises(ValueError, match="exactly one"):
        _make_tasks(RaceConfig(tasks=("lm", "digits"), data=str(text)))
    made = _make_tasks(RaceConfig(tasks=("lm", "quadratic"), data=str(text), quick=True))
    assert made[0].data == str(text) and made[1].name == "quadratic"
    with pytest.raises(ValueError, match="seeds"):
        _make_tasks(RaceConfig(seeds=0))
