"""``examples/train_fsdp.py`` under torchrun: both checkpoint forms resume bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

ROOT = Path(__file__).resolve().parents[2]


def test_train_fsdp_resumes_from_both_checkpoint_forms(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(ROOT / "examples" / "train_fsdp.py"),
        "--steps",
        "4",
        "--resume-steps",
        "2",
        "--checkpoint",
        str(tmp_path / "ck"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for form in ("sharded", "consolidated"):
        assert f"resumed from the {form} checkpoint" in done.stdout
    assert done.stdout.count("parameters equal bit for bit: True") == 2
    assert (tmp_path / "ck-full.pt").is_file()
