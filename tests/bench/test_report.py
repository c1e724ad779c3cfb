"""Summaries and report rendering from records alone: ratios against AdamW, tables, plots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orthoptim.bench.arena import records, report, summary
from tests.bench.synthetic import race, record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write(tmp_path: Path, recs: list[dict]) -> Path:
    for rec in recs:
        records.append(tmp_path / records.RECORDS, rec)
    return tmp_path


def rows_by_name() -> dict[str, summary.Row]:
    return {row.racer: row for row in summary.summarize(race())["toy"]}


def test_summary_picks_the_sweep_winner_and_gathers_its_seeds() -> None:
    rows = rows_by_name()
    assert rows["adamw"].lr_factor == 1.0 and rows["muon"].lr_factor == 2.0
    assert [r["seed"] for r in rows["muon"].seeds] == [0, 1, 2]
    assert rows["muon"].at_edge and not rows["adamw"].at_edge
    s = rows["adamw"].steps_to_target
    assert (s.median, s.lo, s.hi, s.n, s.of) == (12, 10, 14, 3, 3)
    assert rows["muon"].time_to_target.median == pytest.approx(0.12)
    assert rows["muon"].final_target.median == pytest.approx(0.4)
    assert rows["adamw"].opt_step_s == pytest.approx(0.0025)
    assert rows["adamw"].state_bytes == 1024


def test_ratios_pair_seeds_against_adamw() -> None:
    rows = rows_by_name()
    base = summary.baseline(list(rows.values()))
    t = summary.ratio(rows["muon"], base, "time")
    s = summary.ratio(rows["muon"], base, "steps")
    assert t is not None and s is not None
    assert (t.median, t.lo, t.hi) == pytest.approx((1.0, 1.0, 1.0))
    assert (s.median, s.lo, s.hi) == pytest.approx((0.5, 0.5, 0.5))
    assert summary.ratio(rows["muon"], None) is None


def test_a_racer_that_misses_the_target_has_infinite_ratio_and_says_so() -> None:
    recs = [r for r in race() if r["racer"] == "adamw"]
    recs += [record("slow", factor=f, steps_to_target=None) for f in (0.5, 1.0, 2.0)]
    recs += [record("slow", seed=s, phase="seed", steps_to_target=None) for s in (1, 2)]
    rows = {row.racer: row for row in summary.summarize(recs)["toy"]}
    r = summary.ratio(rows["slow"], rows["adamw"])
    assert r is not None and r.median == math.inf and r.n == 0
    assert r.show() == "n/r [n/r-n/r]"
    assert rows["slow"].steps_to_target.show("{:.0f}") == "n/r [n/r-n/r]"


def test_spread_formatting() -> None:
    assert summary.Spread.of_values([1.0, 2.0, None]).show("{:.1f}") == "2.0 [1.0-n/r] (2/3)"
    assert summary.Spread.of_values([3.0]).show("{:.1f}") == "3.0"
    assert summary.Spread.of_values([]).show() == "-"


def test_markdown_has_protocol_environment_tables_claims_and_notes() -> None:
    recs = race()
    text = report.markdown(recs, summary.summarize(recs))
    for needle in (
        "# orthoptim race synthetic",
        "orthoptim race --synthetic",
        "## Protocol",
        "| 0.1.0 | 0123456789 | 2.13.0 | 3.11.7 | 1 | Test CPU",
        "## toy",
        "| muon | 0.02 (x2) edge | - | 3/3 | 6 [5-7] | 0.12 [0.1-0.14] | 1.00 [1.00-1.00] | "
        "0.50 [0.50-0.50] |",
        "| muon | 0.9 | 0.6 | **0.4** |",
        "![toy curves](toy_curves.png)",
        "## Published claims beside measured figures",
        "muon_adamw: same whole-model optimizer as muon",
        "torch:muon did not race toy: 2-D only",
        "a note",
    ):
        assert needle in text, needle


def test_terminal_table_lists_every_racer() -> None:
    text = report.terminal(summary.summarize(race()))
    lines = text.splitlines()
    assert lines[0] == "toy: target val_loss <= 1.0"
    assert any(line.startswith("adamw ") for line in lines)
    assert any(line.startswith("muon ") and "1.00 [1.00-1.00]" in line for line in lines)


def test_peers_are_marked() -> None:
    recs = race() + [record("torch:adamw_fused", factor=f, peer=True) for f in (0.5, 1.0, 2.0)]
    rows = {row.racer: row for row in summary.summarize(recs)["toy"]}
    assert rows["torch:adamw_fused"].label == "torch:adamw_fused (peer)"
    assert "torch:adamw_fused (peer)" in report.terminal(summary.summarize(recs))


def test_render_without_plots_writes_the_report_deterministically(tmp_path: Path) -> None:
    write(tmp_path, race())
    table = report.render(tmp_path, plots=False)
    first = (tmp_path / report.REPORT).read_text()
    assert "muon" in table and "## toy" in first
    report.render(tmp_path, plots=False)
    assert (tmp_path / report.REPORT).read_text() == first
    assert not list(tmp_path.glob("*.png"))


def test_render_draws_valid_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    write(tmp_path, race())
    report.render(tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["toy_curves.png", "toy_curves_all.png", "toy_time_to_target.png"]
    for name in pngs:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
