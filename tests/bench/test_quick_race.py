"""Smoke test: the real ``orthoptim race --quick`` into a temporary folder, then
``orthoptim report`` on that folder alone."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import pytest

from orthoptim.bench.arena import records, tasks
from orthoptim.bench.arena.protocol import MAX_EXTENSIONS, QUICK, grid_step, lr_factors
from orthoptim.bench.arena.selection import pick
from orthoptim.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_race(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    for extra in ("matplotlib", "tqdm", "sklearn"):
        pytest.importorskip(extra, reason="needs the [bench] extra")
    out = tmp_path_factory.mktemp("race") / "quick"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["race", "--quick", "--out", str(out)]) == 0
    return out, stdout.getvalue()


def check_pngs(directory: Path) -> list[str]:
    import matplotlib.image

    names = sorted(p.name for p in directory.glob("*.png"))
    for name in names:
        assert (directory / name).read_bytes()[:8] == PNG_SIGNATURE
        assert matplotlib.image.imread(directory / name).ndim == 3
    return names


def test_quick_race_writes_records_report_and_plots(quick_race: tuple[Path, str]) -> None:
    out, stdout = quick_race
    assert {p.name for p in out.iterdir()} >= {records.RECORDS, "report.md"}
    kinds = ("curves", "curves_all", "time_to_target")
    expected = sorted(f"{t}_{kind}.png" for t in tasks.TASKS for kind in kinds)
    assert check_pngs(out) == expected
    for task in tasks.TASKS:
        assert f"{task}: target " in stdout
    assert "adamw" in stdout and "torch:adamw_fused (peer)" in stdout


def test_quick_race_records_follow_the_protocol(quick_race: tuple[Path, str]) -> None:
    out, _ = quick_race
    recs = records.read(out / records.RECORDS)  # validates every line
    race = recs[0]["race"]
    factors = lr_factors(QUICK["lr_points"], 8.0)
    assert race["lr_factors"] == factors and race["seeds"] == QUICK["seeds"] and race["quick"]
    skipped = {(s["task"], s["racer"]) for s in race["skipped"]}
    runs = Counter((r["task"], r["racer"]) for r in recs)
    extra = Counter((r["task"], r["racer"]) for r in recs if r["extension"])
    assert race["adamw_route"] == "tuned" and race["max_extensions"] == MAX_EXTENSIONS
    for task in race["tasks"]:
        for racer in race["racers"]:
            want = 0 if (task, racer) in skipped else len(factors) + QUICK["seeds"] - 1
            assert runs[(task, racer)] == want + extra[(task, racer)], (task, racer)
            assert extra[(task, racer)] <= 2 * MAX_EXTENSIONS
    step = grid_step(factors)
    for (task, racer), _ in runs.items():
        mine = [r for r in recs if r["task"] == task and r["racer"] == racer]
        base = sorted(r["lr_factor"] for r in mine if r["phase"] == "sweep" and not r["extension"])
        assert base == pytest.approx(factors)
        for r in mine:  # an extension continues the grid beyond an edge, by its own factor
            if r["extension"]:
                k = r["extension"]
                beyond = (max(factors) * step**k, min(factors) / step**k)
                assert any(r["lr_factor"] == pytest.approx(b) for b in beyond)
        seeds = [r for r in mine if r["phase"] == "seed"]
        assert [r["seed"] for r in seeds] == list(range(1, QUICK["seeds"]))
        swept = [r["lr_factor"] for r in mine if r["phase"] == "sweep"]
        assert all(r["lr_factor"] in swept for r in seeds)
    for rec in recs:
        assert rec["env"]["threads"] == 1 and rec["env"]["torch"]
        assert rec["error"] is None, rec["error"]
        if not rec["diverged"]:
            assert rec["recipe"] and rec["memory"]["state_bytes"] > 0
            assert rec["curve"][-1]["step"] == rec["steps"]
    assert any(r["peer"] for r in recs) and any(r["racer"] == "adamw" for r in recs)
    # Every plan's AdamW route ran at the lr AdamW's own sweep picked on that task.
    for task in race["tasks"]:
        mine = [r for r in recs if r["task"] == task]
        adamw = pick(
            [r for r in mine if (r["racer"], r["phase"]) == ("adamw", "sweep")],
            mine[0]["select_metric"],
        )
        plans = [r for r in recs if r["task"] == task and r["adamw_lr"] is not None]
        assert "muon" in {r["racer"] for r in plans}
        assert all(r["adamw_lr"] == pytest.approx(adamw["lr"]) for r in plans)
        assert all(r["adamw_lr"] is None for r in recs if r["racer"] in ("adamw", "sgd"))
    assert any(r["racer"] == "torch:muon" and r["adamw_lr"] is not None for r in recs)
    assert "scikit-learn" in next(r for r in recs if r["task"] == "digits")["task_config"]["source"]


def test_report_re_renders_from_records_alone(quick_race: tuple[Path, str], capsys) -> None:
    out, _ = quick_race
    original = (out / "report.md").read_text()
    for path in [out / "report.md", *out.glob("*.png")]:
        path.unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == original
    assert len(check_pngs(out)) == 3 * len(tasks.TASKS)
    assert "lm: target" in capsys.readouterr().out


def test_the_final_adds_lm_medium_for_the_finalists(quick_race: tuple[Path, str], tmp_path) -> None:
    import shutil

    from orthoptim.bench.arena.final import ALWAYS, FINAL_LR_POINTS, finalists
    from orthoptim.bench.arena.summary import summarize

    out, _ = quick_race
    copy = tmp_path / "with_final"
    shutil.copytree(out, copy)
    before = summarize(records.read(copy / records.RECORDS))
    expected = finalists(before, list(tasks.TASKS))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["race", "--quick", "--final", "--from", str(copy)]) == 0
    recs = records.read(copy / records.RECORDS)
    final = [r for r in recs if r["task"] == "lm_medium"]
    assert {r["racer"] for r in final} == set(expected) >= set(ALWAYS)
    lm = {row.racer: row.lr for row in before["lm"]}
    for r in final:
        assert r["lr_center"] == pytest.approx(lm[r["racer"]])  # centred on the lm pick
        assert r["race"]["lr_factors"] == pytest.approx(lr_factors(FINAL_LR_POINTS, 2.0))
    assert "## lm_medium" in (copy / "report.md").read_text()
    assert (copy / "lm_medium_curves.png").is_file()


def test_from_needs_final(capsys) -> None:
    assert main(["race", "--from", "somewhere"]) == 2
    assert "needs --final" in capsys.readouterr().err
