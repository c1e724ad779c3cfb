"""The orthoptim command line, run in-process and as an installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import orthoptim
from orthoptim.cli import main


def test_list_shows_the_core_optimizers_with_papers(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("sgd", "adamw", "muon", "normuon"):
        assert any(line.split()[0] == name for line in out.splitlines())
    assert "Loshchilov & Hutter" in out and "Jordan et al." in out


def test_list_pattern_and_tag(capsys) -> None:
    assert main(["list", "muon*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == orthoptim.registry.names("muon*")
    assert {"muon", "muon_polar", "muon_nalr"} <= set(names)
    assert all(n.startswith("muon") for n in names)
    assert main(["list", "--tag", "baseline"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["sgd", "adamw"]
    assert main(["list", "zzz*"]) == 1


def test_show_prints_chain_formulas_defaults_and_references(capsys) -> None:
    assert main(["show", "muon"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "paper:",
        "reference:",
        "lr=0.02",
        "Orthogonalize(coeffs='keller_quintic'",
        "1. Momentum:",
        "route adamw",
    ):
        assert needle in out


def test_show_unknown_name_is_an_error_with_suggestions(capsys) -> None:
    assert main(["show", "adamm"]) == 2
    assert "did you mean adamw" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["tiny_gpt", "small_cnn"])
def test_route_prints_the_table(capsys, model) -> None:
    assert main(["route", "--model", model]) == 0
    out = capsys.readouterr().out
    assert "hidden" in out and "vector" in out and "adamw" in out


def test_console_script_and_module_entry_points() -> None:
    exe = shutil.which("orthoptim")
    commands = [[sys.executable, "-m", "orthoptim", "list"]]
    if exe:
        commands.append([exe, "list"])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
        assert "muon_polar" in result.stdout


def test_estimate_prints_routes_totals_and_ranks(capsys) -> None:
    assert main(["estimate", "muon", "--model", "tiny_gpt", "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "route" in out and "muon" in out and "adamw" in out and "total" in out
    assert "rank 0:" in out and "rank 1:" in out
    assert main(["estimate", "adamw", "--model", "small_cnn"]) == 0
    assert "rank 0:" not in capsys.readouterr().out


def test_estimate_takes_a_model_from_a_file(capsys, tmp_path) -> None:
    path = tmp_path / "net.py"
    path.write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10))\n"
    )
    assert main(["estimate", "adamw", "--model", f"{path}:make"]) == 0
    out = capsys.readouterr().out
    # AdamW: two float32 moments per element (1,011,010 of them) and a step counter per tensor
    assert f"{(2 * 4 * 1_011_010 + 4 * 4) / 2**20:.2f} MiB" in out
    assert main(["estimate", "adamw", "--model", "no_colon"]) == 2
    assert "MODULE:ATTR" in capsys.readouterr().err
