"""README.md stays true: its quick start runs and its set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_runs(capsys) -> None:
    (code,) = re.findall(r"## Quick start\n\n```python\n(.*?)```", README, flags=re.S)
    exec(compile(code, "README.md quick start", "exec"), {})
    assert "hidden" in capsys.readouterr().out


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
    main_job = next(c for c in commands if c.rstrip().endswith("orthoptim race"))
    assert re.search(r'pip install -e "\.\[[^\]]*bench[^\]]*\]"', main_job)
