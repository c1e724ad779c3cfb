"""``orthoptim speed --nproc 2`` on a tiny shape set: it runs, balances and counts bytes."""

from __future__ import annotations

import pytest

from orthoptim.bench.speed import dist as speed_dist
from orthoptim.cli import main


def test_speed_nproc_measures_both_layouts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["speed", "--nproc", "2", "--shapes", "24x8,8x16", "--layers", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 process: step" in out
    assert out.count("per-rank step / 1-process step") == 2


def test_owners_split_the_flops_and_bytes_match_the_layout() -> None:
    config = speed_dist.DistConfig(shapes=((24, 8), (8, 16)), layers=2, nproc=2, steps=1)
    rows = speed_dist.run(config, echo=lambda _: None)
    total = rows["single"]["owned_flops"]
    for layout in speed_dist.LAYOUTS:
        ranks = rows["layouts"][layout]["ranks"]
        assert sum(r["owned_flops"] for r in ranks) == total
        assert all(r["owned_flops"] == total / 2 for r in ranks)  # one of each shape per rank
    # Replicated: one all-gather per round, a round being one shape bucket of each owner: each
    # rank sends its 24x8 matrix, then its 8x16 one (float32).
    replicated = rows["layouts"]["replicated"]["ranks"]
    assert all(r["sent_bytes"] == (24 * 8 + 8 * 16) * 4 for r in replicated)
    # Sharded: each rank sends its shards (12 of 24 rows, 4 of 8) of the two matrices the other
    # owns, then the other's rows of its own two matrices back.
    sharded = rows["layouts"]["sharded"]["ranks"]
    assert all(r["sent_bytes"] == 2 * (12 * 8 + 4 * 16) * 4 for r in sharded)
