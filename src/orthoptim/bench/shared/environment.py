"""The environment fingerprint every benchmark record carries (versions, git sha, threads, CPU,
load), and ``plain``, which makes a record strict JSON."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from orthoptim.bench.shared.optional import version_of


def plain(obj: Any) -> Any:
    """``obj`` with tuples as lists and non-finite floats as ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _git(args: Iterable[str]) -> str | None:
    """Read-only git query about the checkout holding this package (``None`` outside one).
    ``--no-optional-locks`` keeps ``status`` from refreshing the index."""
    root = Path(__file__).resolve().parents[4]
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
    """Where and with what a benchmark ran: versions, git sha, threads, CPU, load."""
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
