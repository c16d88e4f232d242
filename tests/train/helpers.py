"""Helpers of the training tests: tiny run configs, the CLI in a subprocess, metrics."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EVAL_TASKS = ROOT / "configs" / "eval"
"""lm-evaluation-harness task files (`skein eval harness --include_path`), not run configs."""


def run_configs() -> list[Path]:
    """Every run config the repository ships (configs/**/*.yaml but the eval task files)."""
    return sorted(p for p in (ROOT / "configs").rglob("*.yaml") if EVAL_TASKS not in p.parents)


def tiny_run(corpus: str, out_dir: Path, arch: str = "llama", **sections) -> dict:
    """A run config dict for a tiny model on `corpus`; `sections` replace or extend the defaults."""
    models = {
        "llama": {"arch": "llama", "vocab_size": 257, "n_layer": 2, "d_model": 32, "n_head": 2},
        "rwkv7": {"arch": "rwkv7", "vocab_size": 257, "n_layer": 2, "d_model": 64, "head_size": 32},
    }
    cfg = {
        "run": {"name": "test", "out_dir": str(out_dir), "seed": 0},
        "model": models[arch],
        "data": {"train": [corpus], "tokenizer": "byte"},
        "optim": {"lr_init": 3e-3, "lr_final": 3e-4},
        "schedule": {"kind": "constant_exp", "warmup_tokens": 1000},
        "stages": [{"ctx_len": 32, "tokens": 32 * 8 * 12, "micro_bsz": 4, "tokens_per_step": 32 * 8}],
        "trainer": {"accelerator": "cpu"},
        "checkpoint": {"every_steps": 3, "keep_last": 2},
        "log": {"every_steps": 1, "wandb": "disabled", "progress_bar": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) and key != "model" else value
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(out_dir: Path) -> dict[tuple[int, int], float]:
    """(stage, step) -> loss from metrics.csv; a step logged twice (before a kill and after the
    resume) keeps its last value."""
    with open(out_dir / "metrics.csv") as f:
        return {(int(r["stage"]), int(r["step"])): float(r["loss"]) for r in csv.DictReader(f)}


def run_cli(
    args: list[str], env_extra: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "skein.train.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "skein.train.cli", *args],
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before the condition was met")
        if time.time() - t0 > timeout:
            proc.send_signal(signal.SIGKILL)
            raise AssertionError("timed out")
        time.sleep(0.01)


def kill_then_resume(cfg: Path, log: Path, ready: Callable[[], bool], final: Path) -> None:
    """Start `skein train cfg`, SIGKILL it once ready() holds (checking it had not yet written the
    `final` checkpoint), then run the same command again to the end."""
    proc = start_cli(["train", str(cfg)], log)
    wait_for(ready, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not final.exists(), "the run ended before the kill"
    res = run_cli(["train", str(cfg)])
    assert res.returncode == 0, res.stderr[-3000:]


def metric_rows(out_dir: Path) -> list[dict[str, str]]:
    """metrics.csv as written, one dict per row, repeats included (unlike `losses`)."""
    with open(out_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def cli_error(args: list[str], capsys) -> str:
    """Run the `skein` CLI in-process, expect exit status 2 and return its one-line stderr."""
    import pytest

    from skein.train.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err
