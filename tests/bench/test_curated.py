"""Curated race folders stay readable: their records pass today's schema and summarise, and
each folder documents its command. Step-speed, op-count and benchmark-script folders hold their
own kinds of records, checked below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orthoptim.bench.arena import records, report, summary
from orthoptim.bench.speed import ops
from orthoptim.bench.speed import report as speed_report

FOLDERS = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "records").glob("*/"))


def _kind(folder: Path) -> str:
    """``"speed"`` (``orthoptim speed``), ``"ops"`` (``orthoptim ops``), ``"script"`` (a
    benchmark script under benchmarks/), else ``"race"``."""
    path = folder / records.RECORDS
    first = path.read_text().split("\n", 1)[0] if path.is_file() else ""
    return next((k for k in ("speed", "ops", "script") if f'"kind": "{k}"' in first), "race")


CURATED = [f for f in FOLDERS if _kind(f) == "race"]
SPEED = [f for f in FOLDERS if _kind(f) == "speed"]
COUNTED = [f for f in FOLDERS if _kind(f) in ("ops", "script")]


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


@pytest.mark.parametrize("folder", COUNTED, ids=[f.name for f in COUNTED])
def test_curated_op_count_and_script_records_document_their_command(folder: Path) -> None:
    lines = (folder / records.RECORDS).read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    assert rows
    readme = (folder / "README.md").read_text()
    for command in {row["run"]["command"] for row in rows}:
        assert command in readme
    for row in rows:
        if row["run"]["kind"] == "ops":
            assert row["set"] in ops.SETS and row["host_reads"] >= 0 and row["kernels"] > 0
