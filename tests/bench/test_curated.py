"""Curated race folders stay readable: their records pass today's schema and summarise, and
each folder documents its command."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthoptim.bench import records, report, summary

CURATED = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "records").glob("*/"))


@pytest.mark.parametrize("folder", CURATED, ids=[f.name for f in CURATED])
def test_curated_records_validate_and_render(folder: Path) -> None:
    recs = records.read(folder / records.RECORDS)
    tables = summary.summarize(recs)
    assert tables and all(rows for rows in tables.values())
    assert "## Headline" in report.markdown(recs, tables)
    readme = (folder / "README.md").read_text()
    assert recs[0]["race"]["command"] in readme
