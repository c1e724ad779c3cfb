"""``orthoptim speed`` runs end to end on tiny shapes and writes readable records (no timing
assertions: speed is measured by the benchmark, never by a test)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from orthoptim.bench.speed import benchmark as speed
from orthoptim.bench.speed import entrants as speed_entrants
from orthoptim.bench.speed import report as speed_report
from orthoptim.bench.speed.hooked import HookedLayers
from orthoptim.bench.speed.measure import count_flops, fixed_params, set_grads
from orthoptim.cli import main


def test_parse_shapes() -> None:
    assert speed.parse_shapes("1536x512, 512X64") == ((1536, 512), (512, 64))
    for bad in ("12", "0x4", "axb", "3x4x5"):
        with pytest.raises(ValueError, match="ROWSxCOLS"):
            speed.parse_shapes(bad)


def test_default_shapes_are_the_issue_set() -> None:
    matrices = speed.LAYER_SHAPES * speed.LAYERS
    assert len(matrices) == 24
    assert round(sum(r * c for r, c in matrices) / 1e6, 1) == 18.9
    full = matrices + speed.ADAMW_EXTRA
    assert round(sum(r * c for r, c in full) / 1e6, 1) == 23.1


def test_speed_run_writes_records_with_ratios(tmp_path: Path) -> None:
    lines: list[str] = []
    config = speed.SpeedConfig(
        shapes=((24, 8), (8, 8)),
        layers=2,
        adamw_extra=((16, 8),),
        specs=("muon", "adamw", "auon"),
        warmup=1,
        steps=1,
        threads=1,
        out=tmp_path,
        rate_size=64,
    )
    _, out = speed.run(config, echo=lines.append)
    recs = speed_report.read(out)
    names = {r["name"] for r in recs}
    assert {"orthoptim:muon", "orthoptim:adamw", "orthoptim:auon", "torch:adamw_fused"} <= names
    by = {r["name"]: r for r in recs}
    assert by["orthoptim:muon"]["state_bytes_per_param"] == 4.0
    assert by["orthoptim:adamw"]["state_bytes_per_param"] == 8.0
    assert by["orthoptim:muon"]["flops"] > 0 and by["orthoptim:muon"]["ratio_muon"] == 1.0
    assert all(r["error"] is None for r in recs), [r["error"] for r in recs if r["error"]]
    assert "FLOP floor" in lines[0] and "orthoptim:muon" in lines[0]
    # The floor divides muon's FLOPs by the median rate of the probe timed among the steps.
    run, muon_flops = by["orthoptim:muon"]["run"], by["orthoptim:muon"]["flops"]
    assert run["rates"]["bf16_flops"] > 0 and run["rates"]["bf16_best"] > 0
    assert math.isclose(run["floor_ms"], muon_flops / run["rates"]["bf16_flops"] * 1e3)
    # The memory floor: gradients read, parameters read and written, state read once (AdamW:
    # 3 x 4 + 8 bytes per parameter), at the streaming rate measured in the same run.
    adamw = by["orthoptim:adamw"]
    want_ms = adamw["params"] * (3 * 4 + 8) / run["rates"]["stream_bytes"] * 1e3
    assert math.isclose(adamw["memory_floor_ms"], want_ms)
    assert math.isclose(adamw["ratio_memory_floor"], adamw["step_ms_median"] / want_ms)
    assert "x mem" in lines[0]


def test_cli_speed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["speed", "--shapes", "16x8", "--layers", "2", "--adamw-extra", "", "--spec", "muon"]
    argv += [
        "--no-peers",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert "orthoptim:muon" in capsys.readouterr().out
    assert speed_report.read(tmp_path)[0]["run"]["command"].startswith("orthoptim")


def test_periodic_optimizers_are_timed_over_a_refresh_period_and_the_check_is_reported(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    config = speed.SpeedConfig(
        shapes=((12, 6),),
        layers=1,
        adamw_extra=(),
        specs=("muon", "shampoo", "mkor"),
        peers=False,
        warmup=0,
        steps=2,
        threads=1,
        out=tmp_path,
        rate_size=32,
    )
    _, out = speed.run(config, echo=lines.append)
    by = {r["name"]: r for r in speed_report.read(out)}
    period = speed_entrants.refresh_period("shampoo")
    assert period == 10 and speed_entrants.refresh_period("muon") == 1
    assert len(by["orthoptim:shampoo"]["step_ms"]) == period
    assert len(by["orthoptim:muon"]["step_ms"]) == 2
    assert by["orthoptim:nonfinite_check"]["state_bytes"] == 0
    assert "non-finite gradient check" in lines[0]
    # MKOR reads layer statistics: timed on hooked layers (test_hooked_optimizers_...).
    assert not any(line.startswith("not timed: orthoptim:mkor") for line in lines)
    assert len(by["orthoptim:mkor"]["step_ms"]) == 2


def test_head_to_head_entrants_run_their_rounds_before_the_other_optimizers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[str] = []

    class Logged:
        def __init__(self, name: str) -> None:
            self.name = name

        def step(self) -> None:
            log.append(self.name)

    families = [("a:muon", "muon"), ("b:slow", "matrix"), ("c:adamw", "adamw"), ("d:x", "matrix")]
    fakes = [
        speed.Entrant(name, "fake", family, False, lambda _ps, name=name: Logged(name))
        for name, family in families
    ]
    monkeypatch.setattr(speed, "entrants", lambda specs, peers: fakes)
    monkeypatch.setattr(speed.closure_section, "closure_entrants", lambda specs: [])
    config = speed.SpeedConfig(
        shapes=((8, 4),), layers=1, adamw_extra=(), warmup=1, steps=2, threads=1,
        out=tmp_path, rate_size=32,
    )  # fmt: skip
    speed.run(config, echo=lambda _line: None)
    rounds = log[: 3 * len(fakes)]  # warm-up + 2 timed rounds each; measurements follow
    assert rounds == ["a:muon", "c:adamw"] * 3 + ["b:slow", "d:x"] * 3


def test_the_other_optimizers_are_compared_with_muon_timed_in_their_own_rounds(
    tmp_path: Path,
) -> None:
    config = speed.SpeedConfig(
        shapes=((12, 6),), layers=1, adamw_extra=(), specs=("muon", "auon"), peers=False,
        warmup=0, steps=3, threads=1, out=tmp_path, rate_size=32,
    )  # fmt: skip
    results, out = speed.run(config, echo=lambda _line: None)
    by = {r.entrant.name: r for r in results}
    muon, auon = by["orthoptim:muon"], by["orthoptim:auon"]
    assert len(muon.times_s) == 3  # the second timing of muon is not muon's own record
    assert auon.muon_ms_alongside is not None and auon.rate_alongside is not None
    assert muon.muon_ms_alongside == muon.median_ms
    row = {r["name"]: r for r in speed_report.read(out)}["orthoptim:auon"]
    assert math.isclose(row["ratio_muon"], auon.median_ms / auon.muon_ms_alongside)


def test_hooked_optimizers_are_timed_with_statistics(tmp_path: Path) -> None:
    """MKOR and MKOR-H step layers whose hooks saw a forward and backward before every step:
    their preconditioner runs (matmul FLOPs beyond the momentum's none, factor state kept)."""
    config = speed.SpeedConfig(
        shapes=((24, 8), (8, 16)),
        layers=1,
        adamw_extra=(),
        specs=("muon", "mkor", "mkor_h"),
        warmup=1,
        steps=1,
        threads=1,
        out=tmp_path,
        rate_size=64,
    )
    speed.run(config, echo=lambda _: None)
    by = {r["name"]: r for r in speed_report.read(tmp_path)}
    assert by["orthoptim:mkor"]["error"] is None and by["orthoptim:mkor_h"]["error"] is None
    assert by["orthoptim:mkor"]["flops"] > 0 and by["orthoptim:mkor_h"]["flops"] > 0
    # Factor inverses (24x24 + 8x8 and 8x8 + 16x16, float32) and momentum: beyond 4 B/param.
    assert by["orthoptim:mkor"]["state_bytes_per_param"] > 4.0
    assert "mkor" not in by["orthoptim:muon"]["run"]["not_timed"]


@pytest.mark.parametrize("name", ["mkor", "mkor_h", "spd_momentum"])
def test_hooked_layers_feed_the_hooks_before_each_step(name: str) -> None:
    params, grads = fixed_params(((24, 8), (8, 16)), 0)
    stepper = HookedLayers(name, params)
    assert all(isinstance(p, torch.nn.Parameter) for p in params)  # the entry's list, replaced
    for _ in range(2):
        stepper.prepare()
        set_grads(params, grads)
        stepper.step()
    for p in params:
        state = stepper.optimizer.state[p]
        suffix = "spd.C" if name == "spd_momentum" else "L_inv"  # the output-side factor
        inverse = next(v for k, v in state.items() if k.endswith(suffix))
        assert not torch.equal(inverse, torch.eye(inverse.shape[0])), (
            f"no statistics reached {name}"
        )


def test_flop_count_adds_the_decompositions_standard_estimates() -> None:
    x = torch.randn(8, 4)
    s = x.T @ x
    expected = {  # Golub & Van Loan's estimates, n = 4 (m = 8 for the SVD and QR)
        "eigh": (lambda: torch.linalg.eigh(s), 9 * 4**3),
        "eigvalsh": (lambda: torch.linalg.eigvalsh(s), 4 * 4**3 // 3),
        "svd": (lambda: torch.linalg.svd(x, full_matrices=False), 6 * 8 * 16 + 20 * 64),
        "svd_full": (lambda: torch.linalg.svd(x), 4 * 64 * 4 + 8 * 8 * 16 + 9 * 64),
        "svdvals": (lambda: torch.linalg.svdvals(x), 4 * 8 * 16 - 4 * 64 // 3),
        "qr": (lambda: torch.linalg.qr(x), 2 * (2 * 8 * 16 - 2 * 64 // 3)),
        "qr_r": (lambda: torch.linalg.qr(x, mode="r"), 2 * 8 * 16 - 2 * 64 // 3),
        "batched": (lambda: torch.linalg.eigh(torch.stack([s, s])), 2 * 9 * 4**3),
        "matmul": (lambda: x @ x.T, 2 * 8 * 4 * 8),
    }
    for name, (step, flops) in expected.items():
        assert count_flops(step) == flops, name


def test_element_wise_optimizers_are_timed_in_adamws_family_on_its_set() -> None:
    from orthoptim import registry
    from orthoptim.bench.speed.entrants import entrants

    timed = {e.name: e for e in entrants(peers=False)}
    expected = [
        n
        for n in registry.names(tag="elementwise")
        if "baseline" not in registry.get(n).tags and not registry.get(n).needs_closure
    ]
    assert {"innaprop", "optimistic_amsgrad", "gravity", "more_momentum"} <= set(expected)
    for name in expected:
        entrant = timed[f"orthoptim:{name}"]
        assert entrant.family == "adamw" and entrant.full_set
