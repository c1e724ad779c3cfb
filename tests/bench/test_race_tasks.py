"""``Spec.race_tasks``: a spec that names its race tasks races only on those built-in tasks (the
race records the others as skipped, with the reason); a user's own task races it."""

from __future__ import annotations

import dataclasses

from orthoptim import registry
from orthoptim.bench.arena import sweep, tasks
from orthoptim.bench.arena.racers import spec_racers


def test_deepzero_races_on_digits_only_and_every_other_spec_everywhere() -> None:
    assert registry.get("deepzero").race_tasks == ("digits",)
    racers = {r.name: r for r in spec_racers(["deepzero", "sgd"])[0]}
    assert racers["deepzero"].tasks == ("digits",) and racers["sgd"].tasks is None
    for name in tasks.TASKS + tasks.FINAL:
        task = tasks.make(name, quick=True)
        assert sweep.runs_on(racers["deepzero"], task) == (name == "digits")
        assert sweep.runs_on(racers["sgd"], task)
    user = dataclasses.replace(tasks.make("quadratic", quick=True), name="custom")
    assert sweep.runs_on(racers["deepzero"], user)


def test_the_skipped_pairs_say_why() -> None:
    racers, _ = spec_racers(["deepzero"])
    deepzero = [r for r in racers if r.name == "deepzero"]
    entries, skipped = sweep._enter([tasks.make("quadratic", quick=True)], deepzero)
    assert entries[0].racers == ()
    assert skipped == [
        {
            "task": "quadratic",
            "racer": "deepzero",
            "reason": "races only on digits (Spec.race_tasks)",
        }
    ]


def test_every_named_race_task_exists() -> None:
    """A misspelt task would silently keep a spec out of the whole race."""
    for name in registry.names():
        only = registry.get(name).race_tasks
        assert only is None or (only and set(only) <= set(tasks.TASKS + tasks.FINAL)), name
