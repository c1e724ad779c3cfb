"""``orthoptim ops``: host reads and kernels per step, counted on any device."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from orthoptim.bench.speed import ops
from orthoptim.cli import main


def test_cli_ops_writes_records_and_a_table(tmp_path: Path) -> None:
    argv = ["ops", "--spec", "sgd", "torch:adamw_fused", "--sets", "gpt24", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [r["entrant"] for r in rows] == ["orthoptim:sgd", "torch:adamw_fused"]
    assert all(r["run"]["kind"] == "ops" and r["set"] == "gpt24" for r in rows)
    assert rows[0]["run"]["command"].startswith("orthoptim")  # the command line as typed
    # the default check's one flag; torch's fused AdamW: its kernel and no read
    assert rows[0]["host_reads"] == 1 and rows[0]["step_reads"] > 0
    assert rows[1]["host_reads"] == 0 and rows[1]["by_op"]["aten._fused_adamw_"] == 1
    assert "| orthoptim:sgd | 1 |" in (tmp_path / "table.md").read_text()


def test_reads_of_device_values_and_of_host_step_counters_are_told_apart() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.state[p]["step"] = torch.tensor(4.0)

    def step() -> None:
        int(opt.state[p]["step"].item())  # a host counter: waits for nothing on a GPU
        bool(p.sum() > 0)  # a device value
        p.tolist()  # another, without dispatching

    counted = ops.count([opt], step, prepare=lambda: None, steps=2)
    assert (counted.host_reads, counted.step_reads) == (2, 1)
    assert counted.by_op == {"aten.sum": 1.0, "aten.gt": 1.0}  # no views, no host reads
