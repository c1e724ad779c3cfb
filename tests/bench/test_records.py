"""The record schema: what every line of records.jsonl must hold, and the JSONL round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orthoptim.bench.arena import records
from tests.bench.synthetic import record


def test_a_synthetic_record_validates() -> None:
    records.validate(record("adamw"))


@pytest.mark.parametrize("key", sorted(records.SCHEMA))
def test_every_schema_key_is_required(key: str) -> None:
    rec = record("adamw")
    del rec[key]
    with pytest.raises(records.RecordError, match=key):
        records.validate(rec)


def test_wrong_types_and_bad_nested_fields_are_refused() -> None:
    for bad in (
        {"seed": "0"},
        {"peer": 1},
        {"lr": True},
        {"phase": "warmup"},
        {"schema": 99},
        {"timing": {"train_s": 1.0}},
        {"env": {"torch": "2.13"}},
        {"target": {"metric": "val_loss"}},
        {"curve": [{"step": 0}]},
    ):
        with pytest.raises(records.RecordError):
            records.validate(record("adamw") | bad)


def test_plain_makes_strict_json() -> None:
    data = records.plain({"a": (1.0, math.nan), "b": {"c": math.inf}, 3: [-math.inf]})
    assert data == {"a": [1.0, None], "b": {"c": None}, "3": [None]}
    json.dumps(data, allow_nan=False)


def test_append_and_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / records.RECORDS
    recs = [record("adamw"), record("muon", final=math.nan)]
    for rec in recs:
        records.append(path, rec)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    back = records.read(tmp_path)
    assert back[0] == records.plain(recs[0])
    assert back[1]["final"]["val_loss"] is None


def test_read_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / records.RECORDS
    records.append(path, record("adamw"))
    with path.open("a") as f:
        f.write('{"schema": 1}\n')
    with pytest.raises(records.RecordError, match=r"records.jsonl:2"):
        records.read(path)
    with pytest.raises(FileNotFoundError):
        records.read(tmp_path / "nowhere")


def test_append_refuses_an_invalid_record(tmp_path: Path) -> None:
    rec = record("adamw")
    del rec["env"]
    with pytest.raises(records.RecordError):
        records.append(tmp_path / records.RECORDS, rec)
    assert not (tmp_path / records.RECORDS).exists()


def test_environment_names_versions_threads_and_cpu() -> None:
    env = records.environment()
    for key in records.ENV_KEYS:
        assert key in env
    assert env["torch"] and env["python"] and env["cpu"]
    assert isinstance(env["threads"], int) and env["threads"] >= 1
    json.dumps(records.plain(env), allow_nan=False)
