"""The README's two commands stay true: CI runs the README's test command verbatim, and the demo
command names a config that loads."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from skein.data.prepare import prepare
from skein.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())[:2]


def test_ci_runs_the_readme_test_command() -> None:
    demo, tests = _commands()
    assert "pytest" in tests and "ruff" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), ".ci/run must run the README's test command verbatim"
    assert "set -euo pipefail" in ci


def test_demo_command_names_a_loadable_cpu_config() -> None:
    demo, _ = _commands()
    assert demo.startswith("pip install torch==2.13.0")
    config = re.search(r"skein train (\S+\.yaml)", demo).group(1)
    cfg = load_config(ROOT / config)
    assert cfg.trainer.accelerator == "cpu"
    default_output = inspect.signature(prepare).parameters["output"].default
    assert cfg.data.train == [default_output], "the demo trains on what `skein prepare` writes by default"
