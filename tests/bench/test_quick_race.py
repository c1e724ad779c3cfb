"""Smoke test: the real ``orthoptim race --quick`` into a temporary folder, then
``orthoptim report`` on that folder alone."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import pytest

from orthoptim.bench import records, tasks
from orthoptim.bench.sweep import QUICK, lr_factors
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
    kinds = ("curves", "time_to_target")
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
    for task in race["tasks"]:
        for racer in race["racers"]:
            want = 0 if (task, racer) in skipped else len(factors) + QUICK["seeds"] - 1
            assert runs[(task, racer)] == want, (task, racer)
    for (task, racer), _ in runs.items():
        mine = [r for r in recs if r["task"] == task and r["racer"] == racer]
        sweep = sorted(r["lr_factor"] for r in mine if r["phase"] == "sweep")
        assert sweep == pytest.approx(factors)
        seeds = [r for r in mine if r["phase"] == "seed"]
        assert [r["seed"] for r in seeds] == list(range(1, QUICK["seeds"]))
        assert all(r["lr_factor"] in sweep for r in seeds)
    for rec in recs:
        assert rec["env"]["threads"] == 1 and rec["env"]["torch"]
        assert rec["error"] is None, rec["error"]
        if not rec["diverged"]:
            assert rec["recipe"] and rec["memory"]["state_bytes"] > 0
            assert rec["curve"][-1]["step"] == rec["steps"]
    assert any(r["peer"] for r in recs) and any(r["racer"] == "adamw" for r in recs)
    assert "scikit-learn" in next(r for r in recs if r["task"] == "digits")["task_config"]["source"]


def test_report_re_renders_from_records_alone(quick_race: tuple[Path, str], capsys) -> None:
    out, _ = quick_race
    original = (out / "report.md").read_text()
    for path in [out / "report.md", *out.glob("*.png")]:
        path.unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == original
    assert len(check_pngs(out)) == 2 * len(tasks.TASKS)
    assert "lm: target" in capsys.readouterr().out
