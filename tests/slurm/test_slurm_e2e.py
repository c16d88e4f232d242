"""Preemption on a real Slurm: a 2-task CPU job (DDP on gloo) queued with `skein submit` gets the
warning signal mid-run, saves a checkpoint, requeues itself, and the requeued job resumes and
ends exactly where an uninterrupted `skein train` on 2 processes ends: same steps, same tokens,
same loss at every step, each step logged once.

The test starts a one-node cluster on loopback (tests/slurm/cluster.py; slurm-wlm is installed
with apt-get when missing and running as root) and stops every daemon at the end."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skein.train.commands.status import describe
from tests.slurm.cluster import LocalSlurm, install
from tests.train.helpers import losses, run_cli, tiny_run, write_config

STEPS = 80


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[LocalSlurm]:
    reason = install()
    if reason is not None:
        pytest.skip(f"no Slurm to test against: {reason}")
    cluster = LocalSlurm(tmp_path / "cluster")
    cluster.root.mkdir()
    try:
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"Slurm could not start here: {e}")
        yield cluster
    finally:
        cluster.stop()


def _config(corpus: str, out_dir: Path) -> dict:
    cfg = tiny_run(
        corpus,
        out_dir,
        stages=[{"ctx_len": 32, "tokens": 256 * STEPS, "micro_bsz": 4, "tokens_per_step": 256}],
        trainer={"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
        checkpoint={"every_steps": 1000, "keep_last": 2},
    )
    cfg["slurm"] = {"cpus_per_task": 1, "signal_seconds": 60, "env": {"OMP_NUM_THREADS": "1"}}
    return cfg


def _wait(predicate: Callable[[], bool], what: str, timeout: float, log: Path | None = None) -> None:
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.05)


def _rows(out_dir: Path) -> list[tuple[int, int]]:
    path = out_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [(int(r["stage"]), int(r["step"])) for r in csv.DictReader(f) if r["time"]]


def _meta(out_dir: Path) -> dict:
    latest = (out_dir / "checkpoints" / "latest").read_text().strip()
    return json.loads((out_dir / "checkpoints" / latest / "meta.json").read_text())


@pytest.mark.slow
def test_preempted_job_requeues_and_resumes_exactly(slurm: LocalSlurm, corpus: str, tmp_path: Path) -> None:
    ref_dir = tmp_path / "ref"
    res = run_cli(["train", str(write_config(_config(corpus, ref_dir), tmp_path / "ref.yaml"))], timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _meta(ref_dir)["step"] == STEPS

    run_dir = tmp_path / "job"
    cfg = write_config(_config(corpus, run_dir), tmp_path / "job.yaml")
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    # sinfo tells what the node has: 2 tasks of all its CPUs each would stay PENDING for ever
    cpus = os.cpu_count()
    refused = subprocess.run(
        [sys.executable, "-m", "skein.train.cli", "submit", str(cfg), f"slurm.cpus_per_task={cpus}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == (
        f"skein submit: error: slurm.cpus_per_task={cpus} x 2 task(s) per node asks for {2 * cpus} CPUs per "
        f"node, but the nodes of the default partition have at most {cpus}: set slurm.cpus_per_task={cpus // 2}"
    )
    assert not (run_dir / "submit").exists()
    submitted = subprocess.run(
        [sys.executable, "-m", "skein.train.cli", "submit", str(cfg), "--nodes", "1", "--gpus-per-node", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "warning" not in submitted.stderr, submitted.stderr  # sinfo answered: the request was checked
    job = re.search(r"submitted job (\d+)", submitted.stdout).group(1)
    log = run_dir / f"slurm-{job}.log"
    assert str(log) in submitted.stdout
    assert (run_dir / "submit" / "config.yaml").is_file()

    # The warning signal, as `#SBATCH --signal=USR1@...` sends it: to every task of the job.
    _wait(lambda: len(_rows(run_dir)) >= 3, "the job to log 3 steps", 240, log)
    slurm.run(["scancel", "--signal=USR1", job])
    _wait(lambda: slurm.job_field(job, "Restarts") == "1", "the job to requeue itself", 120, log)
    _wait(lambda: slurm.job_field(job, "JobState") == "PENDING", "the requeued job to be pending", 120, log)

    meta = _meta(run_dir)
    assert not meta["stage_done"] and 3 <= meta["step"] < STEPS, meta
    stopped_at = meta["step"]
    assert max(step for _, step in _rows(run_dir)) == stopped_at
    text = log.read_text()
    assert "restart 0" in text, text[-3000:]
    assert (
        f"skein: checkpoint saved at step {stopped_at} of stage 1 ({run_dir / 'checkpoints' / f's0-{stopped_at:08d}'}); "
        f"requeueing job {job} as restart 1, which resumes from it." in text
    ), text[-3000:]
    assert "again to continue" not in text, text[-3000:]
    assert f"skein: job {job} step exited with 143 (SIGTERM: expected when the job is requeued" in text, text[
        -3000:
    ]
    assert f"checkpoint s0-{stopped_at:08d}  (stage 1, step {stopped_at}, " in describe(run_dir)

    slurm.release(job)
    _wait(lambda: slurm.job_field(job, "JobState") == "COMPLETED", "the requeued job to complete", 300, log)

    text = log.read_text()
    assert f"skein: job {job} restart 1" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    final = _meta(run_dir)
    assert final["stage_done"] and final["step"] == STEPS
    assert final["tokens_total"] == _meta(ref_dir)["tokens_total"]
    assert f"step {STEPS} of {STEPS}" in describe(run_dir)
    rows = _rows(run_dir)
    assert len(rows) == len(set(rows)) == STEPS, "each step is logged exactly once"
    got, ref = losses(run_dir), losses(ref_dir)
    assert sorted(got) == sorted(ref)
    for key, value in ref.items():
        assert got[key] == value, f"step {key}: after the requeue {got[key]} != uninterrupted {value}"
