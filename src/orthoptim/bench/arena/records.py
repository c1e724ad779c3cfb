"""Race records: one JSON line per run, the environment fingerprint, and the schema check.

A record is plain data (numbers, strings, booleans, lists, dicts; non-finite floats become
``null``), self-contained: it carries the task configuration and target, the racer and its exact
configuration, the race's protocol (lr grid, seeds, aliases, skipped pairs) and the environment,
so ``orthoptim report DIR`` can rebuild every table and plot from ``records.jsonl`` alone.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import UnionType
from typing import Any

# A race record's environment fingerprint and strict JSON (shared with the speed benchmark);
# ``records.environment`` is where the race reads its fingerprint.
from orthoptim.bench.shared.environment import environment as environment
from orthoptim.bench.shared.environment import plain

SCHEMA_VERSION = 1
RECORDS = "records.jsonl"


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceRecord:
    """One line of a race's ``records.jsonl``: one run. The sweep writes it (its protocol
    fields, then the measured part from ``runner.run``); ``validate`` checks every line read
    against these fields' types (``float | int``: any number; ``None`` where it may be
    missing). The fields after ``finished_at`` came after schema 1 was curated: checked when
    present, as older records lack them; ``flops`` is left out of a failed run's record."""

    schema: int
    race: dict[str, Any]
    task: str
    task_config: dict[str, Any]
    racer: str
    peer: bool
    library: str
    mirrors: str
    phase: str
    lr: float | int
    lr_factor: float | int
    lr_center: float | int
    seed: int
    steps: int
    target: dict[str, Any]
    select_metric: str
    recipe: list[Any]
    curve: list[Any]
    final: dict[str, Any]
    steps_done: int
    steps_to_target: int | None
    time_to_target_s: float | int | None
    diverged: bool
    error: str | None
    timing: dict[str, Any]
    memory: dict[str, Any]
    env: dict[str, Any]
    finished_at: str
    adamw_lr: float | int | None
    adamw_lr_factor: float | int | None
    extension: int
    flops: dict[str, Any] | None = None
    loadavg_end: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record as a line holds it (``flops`` left out where the run has none)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["flops"] is None:
            del out["flops"]
        return out


def _types(hint: Any) -> tuple[type, ...]:
    """The runtime types of a field's annotation (``float | int | None`` ->
    ``(float, int, NoneType)``, ``dict[str, Any]`` -> ``(dict,)``)."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in _types(arg))
    return (typing.get_origin(hint) or hint,)


def _schema() -> tuple[dict[str, tuple[type, ...]], dict[str, tuple[type, ...]]]:
    hints = typing.get_type_hints(RaceRecord)
    names = [f.name for f in fields(RaceRecord)]
    later = names.index("finished_at") + 1
    required = {n: _types(hints[n]) for n in names[:later]}
    optional = {n: _types(hints[n]) for n in names[later:]}
    optional["flops"] = (dict,)  # left out rather than null
    return required, optional


SCHEMA, OPTIONAL = _schema()
"""Key -> allowed types of its value: ``SCHEMA`` every record holds, ``OPTIONAL`` the keys added
after schema 1 was curated (checked when present)."""
RACE_KEYS = (
    "id",
    "command",
    "lr_factors",
    "seeds",
    "quick",
    "tasks",
    "racers",
    "aliases",
    "skipped",
)
TIMING_KEYS = ("train_s", "wall_s", "step_s_median", "opt_step_s_median", "opt_share")
MEMORY_KEYS = ("state_bytes", "peak_rss_bytes")
ENV_KEYS = ("orthoptim", "git_sha", "torch", "python", "threads", "cpu")
PHASES = ("sweep", "seed")


class RecordError(ValueError):
    """A record that does not follow the schema."""


def validate(record: Mapping[str, Any]) -> None:
    """Raise ``RecordError`` naming the first key that is missing or of the wrong type."""
    for key, types in SCHEMA.items():
        if key not in record:
            raise RecordError(f"record lacks {key!r}")
        value = record[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise RecordError(f"record {key!r} is {type(value).__name__}, want {types}")
    for key, types in OPTIONAL.items():
        value = record.get(key)
        if key in record and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            raise RecordError(f"record {key!r} is {type(value).__name__}, want {types}")
    if record["schema"] != SCHEMA_VERSION:
        raise RecordError(f"schema {record['schema']}, this orthoptim reads {SCHEMA_VERSION}")
    if record["phase"] not in PHASES:
        raise RecordError(f"record phase {record['phase']!r} not in {PHASES}")
    for name, keys in (
        ("race", RACE_KEYS),
        ("timing", TIMING_KEYS),
        ("memory", MEMORY_KEYS),
        ("env", ENV_KEYS),
    ):
        missing = [k for k in keys if k not in record[name]]
        if missing:
            raise RecordError(f"record {name!r} lacks {missing}")
    for key in ("metric", "value", "mode"):
        if key not in record["target"]:
            raise RecordError(f"record target lacks {key!r}")
    for point in record["curve"]:
        if not {"step", "time_s"} <= set(point):
            raise RecordError("curve points need 'step' and 'time_s'")


def append(path: Path, record: Mapping[str, Any]) -> None:
    """Validate ``record`` and append it to the JSONL file ``path`` as one line."""
    data = plain(record)
    validate(data)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(data, allow_nan=False, sort_keys=True) + "\n")


def read(path: Path) -> list[dict[str, Any]]:
    """Every record of the JSONL file ``path``, validated (``RecordError`` names the line)."""
    if path.is_dir():
        path = path / RECORDS
    if not path.is_file():
        raise FileNotFoundError(f"no records at {path}")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            validate(record)
        except (json.JSONDecodeError, RecordError) as err:
            raise RecordError(f"{path}:{number}: {err}") from None
        out.append(record)
    if not out:
        raise RecordError(f"{path} holds no records")
    return out
