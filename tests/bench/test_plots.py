"""The race's plots: which racers the headline shows, their colours and families, the y-range
around the target, and that ``plot_all`` writes three PNGs per task.

The rules are pure functions, tested without drawing; one test renders a small synthetic race.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orthoptim.bench.arena import figures, plots, records
from orthoptim.bench.arena.summary import Row, Spread, summarize
from tests.bench.synthetic import FACTORS, record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CURATED = Path(__file__).parents[2] / "benchmarks/records/2026-11-25_default-race-2/records.jsonl"

# (racer, mirrors or None for own implementations, steps to target or None, final val_loss)
RACE: list[tuple[str, str | None, int | None, float]] = [
    ("sgd", None, None, 1.2),
    ("adamw", None, 12, 0.6),
    ("muon", None, 10, 0.5),
    ("normuon", None, 8, 0.5),
    ("root", None, 9, 0.45),
    ("shampoo", None, 7, 0.4),
    ("soap", None, 11, 0.3),
    ("grams", None, 14, 0.7),
    ("frugal", None, 6, 0.55),
    ("mystery", None, 13, 0.6),  # not in the registry
    ("torch:adamw_fused", "adamw", 11, 0.6),
    ("heavyball:adamw", "adamw", 15, 0.6),
    ("torch:muon", "muon", 9, 0.5),
    ("heavyball:muon", "muon", 16, 0.5),
]


def race_records(task: str = "toy") -> list[dict[str, Any]]:
    """Three sweep points per racer (the same run), so the pick is any of them."""
    recs = []
    for name, mirrors, steps, final in RACE:
        for f in FACTORS:
            rec = record(
                name, factor=f, final=final, steps_to_target=steps, peer=bool(mirrors), task=task
            )
            rec["mirrors"] = mirrors or name
            recs.append(rec)
    return recs


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return summarize(race_records())["toy"]


def by_name(rows: list[Row]) -> dict[str, Row]:
    return {r.racer: r for r in rows}


def test_families_come_from_the_registry_tags(rows: list[Row]) -> None:
    assert plots.family("muon") == plots.ORTHOGONAL
    assert plots.family("auon") == plots.ORTHOGONAL
    assert plots.family("shampoo") == plots.KRONECKER
    assert plots.family("mfac") == plots.KRONECKER
    assert plots.family("saddle_free_newton") == plots.KRONECKER
    assert plots.family("sam") == plots.NEIGHBOURS
    assert plots.family("adamw") == plots.BASELINES
    assert plots.family("grams") == plots.NEIGHBOURS
    assert plots.family("no_such_optimizer") == plots.OTHER
    named = by_name(rows)
    assert plots.row_family(named["torch:muon"]) == plots.ORTHOGONAL  # a peer joins its mirror
    assert plots.row_family(named["heavyball:adamw"]) == plots.BASELINES
    assert plots.row_family(named["mystery"]) == plots.OTHER


def test_rank_key_puts_the_fastest_first_and_misses_last(rows: list[Row]) -> None:
    ranked = [r.racer for r in sorted(rows, key=plots.rank_key)]
    assert ranked[0] == "frugal" and ranked[-1] == "sgd"  # 6 steps; never reached


def test_headline_has_adamw_muon_the_best_of_each_family_then_peers(rows: list[Row]) -> None:
    shown = [r.racer for r in plots.select_headline(rows)]
    assert len(shown) <= plots.HEADLINE and len(set(shown)) == len(shown)
    assert shown[:2] == ["adamw", "muon"]
    # fastest of each family: baselines adamw (already in), orthogonal normuon (8 steps),
    # Kronecker shampoo (7), neighbours frugal (6), other mystery
    assert shown[2:6] == ["normuon", "shampoo", "frugal", "mystery"]
    # the two places left: the fastest peer of AdamW, then of Muon
    assert shown[6:] == ["torch:adamw_fused", "torch:muon"]


def test_headline_peers_fill_the_room_left_and_never_twice(rows: list[Row]) -> None:
    few = [r for r in rows if r.racer in {"adamw", "muon"} or r.peer]
    shown = [r.racer for r in plots.select_headline(few)]
    assert shown[:2] == ["adamw", "muon"]
    assert sorted(shown[2:]) == sorted(r.racer for r in few if r.peer)
    peers_only = [r for r in rows if r.peer]  # a race without orthoptim's own racers
    shown = [r.racer for r in plots.select_headline(peers_only)]
    assert len(shown) == len(set(shown)) == len(peers_only)
    assert len(plots.select_headline(rows, limit=3)) == 3


def test_colours_are_distinct_and_adamw_muon_keep_theirs(rows: list[Row]) -> None:
    shown = plots.select_headline(rows)
    colors = plots.headline_colors(shown)
    assert set(colors) == {r.racer for r in shown}
    assert len(set(colors.values())) == len(shown)
    assert colors["adamw"] == plots.FIXED["adamw"] and colors["muon"] == plots.FIXED["muon"]
    assert colors["torch:adamw_fused"] == plots.partner(colors["adamw"])  # a peer's shade
    # every racer in one panel: still no colour twice, the headline's kept, reserved ones skipped
    everyone = plots.assign_colors(rows, colors, reserved={"#123456"})
    assert len(set(everyone.values())) == len(rows)
    assert all(everyone[name] == c for name, c in colors.items())
    many = rows * 3  # more racers than the palette: spare hues, never a cycle
    names = [f"r{i}" for i in range(len(many))]
    fake = [replace(r, racer=n) for r, n in zip(many, names, strict=True)]
    assert len(set(plots.assign_colors(fake).values())) == len(fake)


def test_absent_adamw_keeps_its_colour_to_itself(rows: list[Row]) -> None:
    peers = [r for r in rows if r.peer]
    colors = plots.assign_colors(peers)
    assert plots.FIXED["adamw"] not in colors.values()
    assert plots.FIXED["muon"] not in colors.values()


def test_y_limits_focus_on_the_target_for_a_minimised_metric() -> None:
    curves = [[5.5, 3.0, 2.4, 2.2], [5.5, 3.5, 2.8, 2.6]]
    lo, hi = plots.y_limits(curves, 2.5, "min")
    assert 2.1 < lo < 2.2  # just below the best value
    assert hi == pytest.approx(2.5 + 2 * 0.3)  # target + 2 gap, far below the start at 5.5
    assert lo < 2.5 < hi and (2.5 - lo) < (hi - 2.5)


def test_y_limits_mirror_for_a_maximised_metric() -> None:
    lo, hi = plots.y_limits([[0.1, 0.9, 0.97, 0.99]], 0.98, "max")
    assert lo == pytest.approx(0.98 - 2 * 0.01) and 0.99 < hi < 0.992
    assert plots.y_limits([[0.1, 0.95, 0.97]], 0.98, "max")[1] > 0.98  # target missed: shown


def test_y_limits_clip_to_the_data_and_work_in_decades() -> None:
    lo, hi = plots.y_limits([[2.6, 2.4, 2.2]], 2.5, "min")
    assert hi == pytest.approx(2.6 + 0.02 * 0.3)  # target + 2 gap = 3.1 clipped to the data
    lo, hi = plots.y_limits([[2.9, 2.6, 2.55]], 2.5, "min")  # never reached: gap 0.05
    assert lo == pytest.approx(2.5 - 0.08 * 0.05) and hi == pytest.approx(2.55 + 2 * 0.05)
    lo, hi = plots.y_limits([[1.0, 1e-2, 1e-4]], 1e-2, "min", log=True)
    assert 10**-4.2 < lo < 1e-4 and 1.0 < hi < 1.2
    assert plots.y_limits([], 2.5, "min") == pytest.approx((2.25, 2.75))


def test_time_limits_are_not_set_by_one_slow_racer(rows: list[Row]) -> None:
    assert plots.bar_limit(rows) == pytest.approx(0.16 * 1.15)  # heavyball:muon, 16 steps
    slow = replace(rows[0], time_to_target=Spread(50.0, 40.0, 60.0, 3, 3))
    median = sorted(r.time_to_target.median for r in rows[1:])[6]  # of 13 reached, with slow
    assert plots.bar_limit([slow, *rows[1:]]) == pytest.approx(4 * median)
    assert plots.time_limit(rows) == pytest.approx(0.2 * 1.02)  # every run trains 0.2 s


def test_plot_all_writes_three_pngs_per_task(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    keep = {"adamw", "muon", "shampoo", "torch:muon"}  # few racers: drawing takes the time
    recs = [r for r in race_records("toy") + race_records("other") if r["racer"] in keep]
    summary = summarize(recs)
    written = figures.plot_all(summary, tmp_path)
    kinds = ("curves", "curves_all", "time_to_target")
    assert written == [tmp_path / f"{t}_{k}.png" for t in ("toy", "other") for k in kinds]
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.skipif(not CURATED.exists(), reason="curated race records not in this checkout")
def test_curated_race_headlines_are_small_and_distinctly_coloured() -> None:
    for task, task_rows in summarize(records.read(CURATED)).items():
        shown = plots.select_headline(task_rows)
        names = [r.racer for r in shown]
        assert names[:2] == ["adamw", "muon"] and len(names) <= plots.HEADLINE, task
        assert len(set(plots.headline_colors(shown).values())) == len(shown), task
        families = {plots.row_family(r) for r in task_rows}
        assert families == {plots.BASELINES, plots.ORTHOGONAL, plots.KRONECKER, plots.NEIGHBOURS}
        target = task_rows[0].seeds[0]["target"]
        medians = [figures._band(r.seeds, target["metric"], "step")[1] for r in shown]
        lo, hi = plots.y_limits(medians, target["value"], target["mode"])
        assert lo < target["value"] < hi, task
        assert math.isfinite(lo) and math.isfinite(hi)


def test_the_flops_axis_is_step_times_training_flops_per_step() -> None:
    from orthoptim.bench.arena.figures import _band, _has_flops
    from tests.bench.synthetic import race

    recs = race()
    rows = summarize(recs)["toy"]
    assert not _has_flops(rows)  # records from before the runner counted FLOPs
    assert _band(rows[0].seeds, "val_loss", "flops") == ([], [], [], [])
    for rec in recs:
        rec["flops"] = {"model_step": 100, "optimizer_step": 20.0}
    rows = summarize(recs)["toy"]
    assert _has_flops(rows)
    xs, *_ = _band(rows[0].seeds, "val_loss", "flops")
    steps, *_ = _band(rows[0].seeds, "val_loss", "step")
    assert xs == [120.0 * s for s in steps]
    assert rows[0].opt_flops == 20.0 and rows[0].train_flops == 120.0
