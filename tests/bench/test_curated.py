"""Curated race folders stay readable: their records pass today's schema and summarise, and
each folder documents its command."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthoptim.bench.arena import records, report, summary
from orthoptim.bench.speed import report as speed_report

FOLDERS = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "records").glob("*/"))


def _is_speed(folder: Path) -> bool:
    """``orthoptim speed`` folders hold step-speed records, checked by their own test below."""
    path = folder / records.RECORDS
    first = path.read_text().split("\n", 1)[0] if path.is_file() else ""
    return '"kind": "speed"' in first


CURATED = [f for f in FOLDERS if not _is_speed(f)]
SPEED = [f for f in FOLDERS if _is_speed(f)]


@pytest.mark.parametrize("folder", CURATED, ids=[f.name for f in CURATED])
def test_curated_records_validate_and_render(folder: Path) -> None:
    recs = records.read(folder / records.RECORDS)
    tables = summary.summarize(recs)
    assert tables and all(rows for rows in tables.values())
    assert "## Headline" in report.markdown(recs, tables)
    readme = (folder / "README.md").read_text()
    assert recs[0]["race"]["command"] in readme


@pytest.mark.parametrize("folder", SPEED, ids=[f.name for f in SPEED])
def test_curated_speed_records_validate(folder: Path) -> None:
    recs = speed_report.read(folder)
    readme = (folder / "README.md").read_text()
    assert recs[0]["run"]["command"] in readme
