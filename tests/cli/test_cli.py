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
