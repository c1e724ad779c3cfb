"""The race's protocol on a stub task with known answers: AdamW's pick sets every plan's AdamW
route, the edge rule extends and flags, and the Python API races a user's model."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from orthoptim.bench.arena import records, report, summary
from orthoptim.bench.arena.api import UserTask
from orthoptim.bench.arena.protocol import MAX_EXTENSIONS, ROUTE_FACTORS, RaceConfig
from orthoptim.bench.arena.racers import Racer
from orthoptim.bench.arena.sweep import run_race
from orthoptim.bench.arena.tasks.base import Target

pytest.importorskip("matplotlib", reason="the race renders plots")


class Built(nn.Module):
    """Remembers the lrs its optimizer was built with; the stub metric reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 2))
        self.lr = math.nan
        self.adamw_lr: float | None = None


def _racer(name: str, lr: float, adamw_lr_scale: float | None = None) -> Racer:
    def make(model: nn.Module, lr: float, adamw_lr: float | None) -> Any:
        model.lr, model.adamw_lr = lr, adamw_lr
        return torch.optim.SGD(model.parameters(), lr=0.0)

    return Racer(
        name=name,
        lr=lr,
        peer=False,
        library="stub",
        mirrors=name,
        make=make,
        adamw_lr_scale=adamw_lr_scale,
    )


# Each racer's held-out metric as a function of its lr (and AdamW-route lr), minimised at:
BEST = {"adamw": 4e-3, "plan": 0.02, "edgy": math.inf, "cliff": 0.04}
CENTRE = {"adamw": 1e-3, "plan": 0.02, "edgy": 0.1, "cliff": 0.02}


def _metric(model: Built, name: str) -> float:
    lr = model.lr
    if name == "edgy":
        return 1 / lr  # always better with a larger lr
    if name == "cliff" and lr > 0.05:
        return math.nan  # diverges beyond x2.5
    value = math.log(lr / BEST[name]) ** 2
    if model.adamw_lr is not None:  # the plan prefers its AdamW route at 4e-3 too
        value += math.log(model.adamw_lr / 4e-3) ** 2
    return value


def _task(name_of: dict[int, str]) -> UserTask:
    def model_fn() -> nn.Module:
        return Built()

    def batches(seed: int) -> Iterator[None]:
        while True:
            yield None

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"val": _metric(model, name_of[id(model)])}  # type: ignore[arg-type]

    return UserTask(
        name="stub",
        steps=2,
        eval_every=1,
        target=Target("val", 0.5, "min"),
        select_metric="val",
        model_fn=model_fn,
        batches_fn=batches,
        loss_fn=lambda model, batch: model.weight.sum(),
        evaluate_fn=evaluate,
    )


def _stub_racers(name_of: dict[int, str]) -> list[Racer]:
    """The stub racers; each model they build is entered in ``name_of`` under its racer."""
    racers = []
    for name, scale in (("adamw", None), ("plan", 0.015), ("edgy", None), ("cliff", None)):
        inner = _racer(name, CENTRE[name], scale)

        def make(model: nn.Module, lr: float, adamw_lr: float | None, n=name, i=inner) -> Any:
            name_of[id(model)] = n
            return i.make(model, lr, adamw_lr)

        racers.append(Racer(**{**_fields(inner), "make": make}))
    return racers


def _race(tmp_path: Path, adamw_route: str) -> list[dict[str, Any]]:
    """Race the stub racers; each model learns its racer's name from the make call."""
    name_of: dict[int, str] = {}
    racers = _stub_racers(name_of)
    config = RaceConfig(
        lr_points=3,
        lr_span=2.0,
        seeds=2,
        peers=False,
        progress=False,
        adamw_route=adamw_route,  # type: ignore[arg-type]
        out=tmp_path / adamw_route,
        command="stub race",
    )
    with contextlib.redirect_stdout(io.StringIO()):
        out = run_race([_task(name_of)], config, racers=racers)
    return records.read(out / records.RECORDS)


def _fields(racer: Racer) -> dict[str, Any]:
    return {name: getattr(racer, name) for name in Racer.__slots__}  # type: ignore[attr-defined]


def _runs(recs: list[dict[str, Any]], racer: str, phase: str = "sweep") -> list[dict[str, Any]]:
    return [r for r in recs if r["racer"] == racer and r["phase"] == phase]


def test_adamw_sweeps_first_and_its_pick_sets_every_plans_route(tmp_path: Path) -> None:
    recs = _race(tmp_path, "tuned")
    first_other = next(i for i, r in enumerate(recs) if r["racer"] != "adamw")
    assert all(r["racer"] == "adamw" for r in recs[:first_other] if r["phase"] == "sweep")
    rows = {row.racer: row for row in summary.summarize(recs)["stub"]}
    assert rows["adamw"].lr == pytest.approx(4e-3)  # found beyond the base grid's edge x2
    plan = [r for r in recs if r["racer"] == "plan"]
    assert plan and all(r["adamw_lr"] == pytest.approx(4e-3) for r in plan)
    assert all(r["adamw_lr"] is None for r in recs if r["racer"] != "plan")
    assert rows["plan"].adamw_lr == pytest.approx(4e-3)
    assert "| plan | 0.02 (x1) | 0.004 |" in report.markdown(recs, summary.summarize(recs))


def test_the_edge_rule_extends_until_interior_or_diverged_and_flags_the_rest(
    tmp_path: Path,
) -> None:
    recs = _race(tmp_path, "tuned")
    rows = {row.racer: row for row in summary.summarize(recs)["stub"]}
    adamw = sorted(r["lr_factor"] for r in _runs(recs, "adamw"))
    assert adamw == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0])  # x4 is interior after x8
    assert not rows["adamw"].at_edge and rows["adamw"].extensions == 2
    # edgy keeps improving: 3 extensions, still at the edge, flagged.
    edgy = sorted(r["lr_factor"] for r in _runs(recs, "edgy"))
    assert edgy == pytest.approx([0.5, 1, 2, 4, 8, 16][: 3 + MAX_EXTENSIONS])
    assert rows["edgy"].at_edge and rows["edgy"].extensions == MAX_EXTENSIONS
    text = report.markdown(recs, summary.summarize(recs))
    assert "edgy: the picked lr is still at an edge of its sweep (3 point(s)" in text
    # cliff: its best is beyond the grid, but the next point diverges, so x2 is bracketed.
    cliff = {r["lr_factor"]: r["diverged"] for r in _runs(recs, "cliff")}
    assert cliff == {0.5: False, 1.0: False, 2.0: False, 4.0: True}
    assert rows["cliff"].lr_factor == 2.0 and not rows["cliff"].at_edge
    # plan's best is the centre: no extension.
    assert sorted(r["lr_factor"] for r in _runs(recs, "plan")) == [0.5, 1.0, 2.0]
    # Seeds run at the pick of each racer.
    for name, row in rows.items():
        seeds = _runs(recs, name, "seed")
        assert [r["lr_factor"] for r in seeds] == [row.lr_factor]


def test_ratio_keeps_the_old_protocol_and_sweep_adds_a_route_axis(tmp_path: Path) -> None:
    ratio = _race(tmp_path, "ratio")
    for r in _runs(ratio, "plan"):
        assert r["adamw_lr"] == pytest.approx(r["lr"] * 0.015) and r["adamw_lr_factor"] is None
    swept = _race(tmp_path, "sweep")
    plan = _runs(swept, "plan")
    assert {r["adamw_lr_factor"] for r in plan} == set(ROUTE_FACTORS)
    assert len(plan) == 3 * len(ROUTE_FACTORS)
    for r in plan:
        assert r["adamw_lr"] == pytest.approx(4e-3 * r["adamw_lr_factor"])
    row = next(row for row in summary.summarize(swept)["stub"] if row.racer == "plan")
    assert row.adamw_lr_factor == 1.0 and row.adamw_lr == pytest.approx(4e-3)
    seeds = _runs(swept, "plan", "seed")
    assert [(r["lr_factor"], r["adamw_lr_factor"]) for r in seeds] == [(1.0, 1.0)]
    assert swept[0]["race"]["adamw_route"] == "sweep"


def test_bad_protocol_settings_are_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="adamw_route must be one of"):
        run_race([], RaceConfig(adamw_route="both", out=tmp_path / "x", progress=False))  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_the_python_api_races_a_users_model(tmp_path: Path) -> None:
    import orthoptim.bench

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x @ torch.randn(8, 1)).squeeze(1) + 0.1 * torch.randn(256)
    train, held = slice(0, 192), slice(192, 256)

    def model_fn() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Linear(16, 1))

    def batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        while True:
            i = torch.randint(0, 192, (32,), generator=g)
            yield x[train][i], y[train][i]

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.mse_loss(model(batch[0]).squeeze(1), batch[1])

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"val_mse": loss_fn(model, (x[held], y[held])).item()}

    with contextlib.redirect_stdout(io.StringIO()):
        out = orthoptim.bench.race(
            model_fn,
            batches,
            evaluate,
            loss_fn=loss_fn,
            target=("val_mse", 2.0, "min"),
            steps=20,
            eval_every=5,
            specs=["muon"],
            peers=False,
            lr_points=3,
            seeds=2,
            out=tmp_path / "mine",
            progress=False,
        )
    recs = records.read(out / records.RECORDS)
    assert {r["racer"] for r in recs} == {"adamw", "muon"}
    assert (out / "report.md").is_file() and (out / "custom_curves.png").is_file()
    adamw = next(row for row in summary.summarize(recs)["custom"] if row.racer == "adamw")
    assert all(r["adamw_lr"] == pytest.approx(adamw.lr) for r in recs if r["racer"] == "muon")
    with pytest.raises(ValueError, match="select_metric"):
        orthoptim.bench.race(
            model_fn, batches, evaluate, loss_fn=loss_fn, target=("val_mse", 0.9, "max"), steps=5
        )


def test_the_race_your_model_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, str(root / "examples" / "race_your_model.py"), "--quick"]
    command += ["--specs", "muon", "--out", str(tmp_path / "wine")]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    recs = records.read(tmp_path / "wine" / records.RECORDS)
    assert {r["task"] for r in recs} == {"wine_mlp"} and {r["racer"] for r in recs} >= {"muon"}


def test_finalists_are_the_best_five_by_median_time_ratio_plus_adamw_muon_and_peers() -> None:
    from orthoptim.bench.arena.final import FINALISTS, centred, finalists, standing
    from tests.bench.synthetic import record

    recs = []
    # Two small tasks; racer k reaches the target in 10 + k steps at 0.01 s (AdamW: 10), so
    # the ratios order the racers; "never" misses every target and "muon" is slow.
    names = [f"r{k}" for k in range(1, 8)]
    for task in ("lm", "digits"):
        recs.append(record("adamw", task=task, steps_to_target=10))
        recs.append(record("muon", task=task, steps_to_target=40))
        recs.append(record("never", task=task, steps_to_target=None))
        recs.append(record("torch:muon", task=task, steps_to_target=30, peer=True))
        for k, name in enumerate(names, start=1):
            recs.append(record(name, task=task, steps_to_target=10 + k, factor=2.0))
    rows = summary.summarize(recs)
    ranks = standing(rows, ["lm", "digits"])
    assert ranks["r1"] == pytest.approx(1.1) and ranks["never"] == math.inf
    chosen = finalists(rows, ["lm", "digits"])
    assert chosen == ["adamw", "muon", *names[:FINALISTS], "torch:muon"]
    racer = _racer("r1", 0.5)
    assert centred([racer], rows)[0].lr == pytest.approx(0.02)  # its pick on lm: 0.01 x 2


def test_an_interrupted_task_resumes_from_its_records(tmp_path: Path) -> None:
    """``run_more`` into a folder that already holds some of the task's runs (a final stopped
    by hand, run again with ``--final --from DIR``) reads them back and runs only the rest."""
    from orthoptim.bench.arena.sweep import run_more

    full = _race(tmp_path, "tuned")
    path = tmp_path / "tuned" / records.RECORDS
    kept = full[: len(full) // 2]
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    name_of: dict[int, str] = {}
    racers = _stub_racers(name_of)
    config = RaceConfig(lr_points=3, lr_span=2.0, seeds=2, peers=False, progress=False)
    run_more(tmp_path / "tuned", [_task(name_of)], racers, [], config)
    resumed = records.read(path)

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["racer"], r["phase"], r["lr_factor"], r["adamw_lr_factor"], r["seed"]

    assert sorted(map(key, resumed)) == sorted(map(key, full))  # nothing twice, nothing missing
    assert resumed[: len(kept)] == kept
    finals = {key(r): r["final"] for r in full}
    assert all(r["final"] == finals[key(r)] for r in resumed)
