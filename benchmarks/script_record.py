"""What a benchmark script under ``benchmarks/`` records: its result as one JSON line with the
command and the machine (``"kind": "script"``, checked by ``tests/bench/test_curated.py``)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

from orthoptim.bench.shared.environment import environment


def run_info() -> dict[str, object]:
    """The ``run`` entry of a script's record: the command as typed, the date, the machine."""
    return {
        "kind": "script",
        "command": "python " + " ".join(sys.argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": environment(),
    }


def report(result: dict[str, object], out: Path | None) -> None:
    """Print ``result``; with ``out``, append it to ``out/records.jsonl``."""
    print(json.dumps(result, indent=1))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "records.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
