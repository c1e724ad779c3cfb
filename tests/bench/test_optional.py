"""Without the [bench] extra the library and the CLI still import; the race says what to
install, and reports still render their tables."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    for name in ("matplotlib", "tqdm", "sklearn"):
        sys.modules[name] = None  # import raises ImportError
    import orthoptim.bench.models, orthoptim.bench.arena.plots, orthoptim.bench.arena.report
    import orthoptim.bench.arena.figures
    import orthoptim.bench.arena.sweep, orthoptim.bench.arena.tasks, orthoptim.cli
    from orthoptim.bench.arena import records
    from orthoptim.cli import main
    from tests.bench.synthetic import race

    out = sys.argv[1]
    assert main(["route", "--model", "small_cnn"]) == 0
    assert main(["race", "--quick", "--task", "quadratic", "--out", out]) == 2
    for rec in race():
        records.append(__import__("pathlib").Path(out) / records.RECORDS, rec)
    assert main(["report", out, "--no-plots"]) == 0
    assert main(["report", out]) == 2
    """
)


def test_bench_imports_without_the_extra(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "[bench]" in result.stderr and "pip install" in result.stderr
    assert (tmp_path / "report.md").is_file()
    assert not list(tmp_path.glob("*.png"))
