"""The README's two commands stay true: CI runs the README's test command verbatim, and the demo
command names a config that loads."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from skein.data.prepare import prepare
from skein.train.config import load_config
from skein.train.plan import stage_plans

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


def test_the_demo_sentence_states_what_the_demo_config_plans() -> None:
    """The README's figures for the demo are the demo config's plan (steps, tokens per step and in
    all), and its timing names what was measured and where, not a bare promise."""
    demo, _ = _commands()
    cfg = load_config(ROOT / re.search(r"skein train (\S+\.yaml)", demo).group(1))
    text = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"The demo trains (\d+) steps of ([\d,]+) byte tokens \(([\d.]+) M in all", text)
    assert m is not None, "the README's demo sentence names steps, tokens per step and tokens in all"
    (plan,) = stage_plans(cfg)
    assert int(m.group(1)) == plan.steps and int(m.group(2).replace(",", "")) == plan.tokens_per_step
    assert float(m.group(3)) == round(plan.total_tokens / 1e6, 1)
    timing = re.search(r"Measured in a fresh clone on 2 idle cores, the steps take (\d+)-(\d+) s", text)
    assert timing is not None and "under a minute" not in text
    # the sentence points at metrics.csv's time column, which holds every step only if every step is logged
    assert "`metrics.csv`'s `time` column" in text and cfg.log.every_steps == 1
