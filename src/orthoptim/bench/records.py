"""Race records: one JSON line per run, the environment fingerprint, and the schema check.

A record is plain data (numbers, strings, booleans, lists, dicts; non-finite floats become
``null``), self-contained: it carries the task configuration and target, the racer and its exact
configuration, the race's protocol (lr grid, seeds, aliases, skipped pairs) and the environment,
so ``orthoptim report DIR`` can rebuild every table and plot from ``records.jsonl`` alone.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from orthoptim.bench._optional import version_of

SCHEMA_VERSION = 1
RECORDS = "records.jsonl"

# key -> allowed types of its value (``type(None)`` where the value may be missing)
SCHEMA: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "race": (dict,),
    "task": (str,),
    "task_config": (dict,),
    "racer": (str,),
    "peer": (bool,),
    "library": (str,),
    "mirrors": (str,),
    "phase": (str,),
    "lr": (float, int),
    "lr_factor": (float, int),
    "lr_center": (float, int),
    "seed": (int,),
    "steps": (int,),
    "target": (dict,),
    "select_metric": (str,),
    "recipe": (list,),
    "curve": (list,),
    "final": (dict,),
    "steps_done": (int,),
    "steps_to_target": (int, type(None)),
    "time_to_target_s": (float, int, type(None)),
    "diverged": (bool,),
    "error": (str, type(None)),
    "timing": (dict,),
    "memory": (dict,),
    "env": (dict,),
    "finished_at": (str,),
}
OPTIONAL: dict[str, tuple[type, ...]] = {
    "adamw_lr": (float, int, type(None)),
    "adamw_lr_factor": (float, int, type(None)),
    "extension": (int,),
    "flops": (dict,),
}
"""Keys added after schema 1 was curated: checked when present (older records lack them)."""
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


def plain(obj: Any) -> Any:
    """``obj`` with tuples as lists and non-finite floats as ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


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


def _git(args: Iterable[str]) -> str | None:
    """Read-only git query about the checkout holding this package (``None`` outside one).
    ``--no-optional-locks`` keeps ``status`` from refreshing the index."""
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where and with what the race ran: versions, git sha, threads, CPU, load."""
    sha = _git(["rev-parse", "HEAD"])
    dirty = _git(["status", "--porcelain", "--untracked-files=no"])
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "orthoptim": version_of("orthoptim"),
        "git_sha": sha,
        "git_dirty": None if dirty is None else bool(dirty),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "loadavg_start": load,
        "packages": {
            name: version_of(name)
            for name in ("heavyball", "pytorch-optimizer", "scikit-learn", "numpy")
        },
    }
