"""`skein status RUN_DIR` on run directories laid out as `skein train` leaves them: progress and
ETA from metrics.csv and the stage plan, the newest checkpoint, and the holder of run.lock."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from skein.train.checkpoints.checkpoint import CheckpointMeta
from skein.train.checkpoints.lock import current_holder
from skein.train.commands.status import describe
from skein.train.config import dump_config, load_config
from skein.train.typed import ConfigError
from tests.train.helpers import tiny_run, write_config

FIELDS = ("stage", "step", "tokens", "loss", "tokens_per_s", "mfu", "grad_norm", "gpu_mem_gb", "time")


def _run_dir(tmp_path: Path, rows: int) -> tuple[Path, list[dict]]:
    """A two-stage run (10 steps of 256 tokens, then 12 of 512) with `rows` logged steps."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stages = [
        {"ctx_len": 32, "tokens": 2560, "micro_bsz": 4, "tokens_per_step": 256},
        {"ctx_len": 64, "tokens": 6144, "micro_bsz": 4, "tokens_per_step": 512},
    ]
    cfg = load_config(write_config(tiny_run("shards/x", run_dir, stages=stages), tmp_path / "c.yaml"))
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    rng = np.random.default_rng(7)
    logged = []
    for i in range(rows):
        stage, step = (0, i + 1) if i < 10 else (1, i - 9)
        tokens = 256 * min(i + 1, 10) + 512 * max(i - 9, 0)
        logged.append(
            {
                "stage": stage,
                "step": step,
                "tokens": tokens,
                "loss": 5.5 - 0.1 * i + rng.normal(0, 0.05),
                "tokens_per_s": rng.uniform(50, 200),
                "mfu": "",
                "grad_norm": rng.uniform(0.5, 2),
                "gpu_mem_gb": "",
                "time": 0.5 * (i + 1),
            }
        )
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(logged)
    return run_dir, logged


def _checkpoint(run_dir: Path, stage: int, step: int, tokens: int, done: bool) -> None:
    name = f"s{stage}-{step:08d}"
    (run_dir / "checkpoints" / name).mkdir(parents=True)
    CheckpointMeta(
        stage_index=stage, step=step, tokens_stage=tokens, tokens_total=tokens, stage_done=done
    ).write(run_dir / "checkpoints" / name)
    (run_dir / "checkpoints" / "latest").write_text(name + "\n")


def test_status_of_a_run_in_its_second_stage_held_by_a_live_process(tmp_path: Path) -> None:
    run_dir, logged = _run_dir(tmp_path, rows=14)
    _checkpoint(run_dir, 1, 3, 2560 + 3 * 512, done=False)
    lock = replace(current_holder(), slurm_job_id="4242")
    (run_dir / "run.lock").write_text(json.dumps(asdict(lock)))
    last = logged[-1]
    left = 2560 + 6144 - last["tokens"]
    eta = int(left / last["tokens_per_s"])
    lines = describe(run_dir).splitlines()
    assert lines[1] == "stage      2 of 2  (ctx_len 64), step 4 of 12"
    assert lines[2] == f"tokens     {last['tokens']:,} of 8,704 ({100 * last['tokens'] / 8704:.1f}%)"
    assert lines[3] == (
        f"loss       {last['loss']:.4f}   tokens/s {last['tokens_per_s']:,.0f}   "
        f"ETA 0h{eta // 60:02d}m{eta % 60:02d}s"
    )
    assert lines[4] == "checkpoint s1-00000003  (stage 2, step 3, 4,096 tokens, mid-stage)"
    assert (
        lines[5]
        == f"lock       pid {os.getpid()} on host {socket.gethostname()}, SLURM job 4242, since {lock.started}"
    )


def test_status_of_a_fresh_run_and_of_a_stale_lock(tmp_path: Path) -> None:
    run_dir, _ = _run_dir(tmp_path, rows=0)
    assert describe(run_dir).splitlines()[1:] == [
        "progress   no step logged yet",
        "checkpoint none",
        "lock       free (no process holds the run)",
    ]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = replace(current_holder(), pid=gone.pid, proc_start=None)
    (run_dir / "run.lock").write_text(json.dumps(asdict(lock)))
    assert describe(run_dir).splitlines()[-1] == (
        f"lock       pid {gone.pid} on host {socket.gethostname()}, since {lock.started}"
        "  (stale: that process is gone)"
    )


def test_status_of_a_finished_run_says_done(tmp_path: Path) -> None:
    run_dir, _ = _run_dir(tmp_path, rows=22)
    _checkpoint(run_dir, 1, 12, 8704, done=True)
    lines = describe(run_dir).splitlines()
    assert lines[1] == "stage      2 of 2  (ctx_len 64), step 12 of 12" and lines[3].endswith("ETA done")
    assert lines[4] == "checkpoint s1-00000012  (stage 2, step 12, 8,704 tokens, stage finished)"


def test_status_of_a_directory_that_is_no_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config.yaml, so not a skein run directory"):
        describe(tmp_path)
