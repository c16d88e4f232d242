"""The run-directory lock: a second `skein train` on a busy directory is refused at once and
leaves the first run's files alone; a lock left by a killed process is taken over; a lock from
another host is never taken over; only global rank 0 takes it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from skein.train.checkpoints import lock
from skein.train.checkpoints.lock import (
    LOCK_NAME,
    RunDirBusy,
    acquire,
    current_holder,
    read_lock,
    release,
    run_lock,
)
from tests.train.helpers import run_cli, start_cli, tiny_run, wait_for, write_config


def _metrics_rows(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.csv").read_text().splitlines()[1:]


@pytest.mark.slow
def test_second_train_on_a_busy_directory_is_refused_and_the_first_is_untouched(
    corpus: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    first = write_config(tiny_run(corpus, run_dir), tmp_path / "first.yaml")
    # The second differs by an allowed key: without the lock it would rewrite config.yaml.
    second = write_config(tiny_run(corpus, run_dir, log={"every_steps": 2}), tmp_path / "second.yaml")
    proc = start_cli(["train", str(first)], tmp_path / "first.log")
    wait_for(lambda: (run_dir / "metrics.csv").exists() and len(_metrics_rows(run_dir)) >= 1, proc)
    holder = read_lock(run_dir)
    assert holder is not None and holder.pid == proc.pid and holder.host == socket.gethostname()
    config_before = (run_dir / "config.yaml").read_bytes()
    # Paused (alive, holding the lock) while the second starts, so the overlap does not depend
    # on how fast either process runs.
    proc.send_signal(signal.SIGSTOP)
    try:
        rows_before = _metrics_rows(run_dir)
        assert len(rows_before) < 12, "the first run ended before the second started"
        res = run_cli(["train", str(second)])
        assert _metrics_rows(run_dir) == rows_before
        assert (run_dir / "config.yaml").read_bytes() == config_before
    finally:
        proc.send_signal(signal.SIGCONT)
    assert res.returncode != 0
    message = res.stderr.strip().splitlines()[-1]
    assert f"pid {proc.pid} on host {socket.gethostname()}" in message, res.stderr[-2000:]
    assert "in use" in message

    assert proc.wait(timeout=300) == 0
    steps = [int(row.split(",")[1]) for row in _metrics_rows(run_dir)]
    assert steps == list(range(1, 13)), "metrics rows written twice or by the refused run"
    assert (run_dir / "checkpoints" / "s0-00000012").is_dir()
    assert (run_dir / "config.yaml").read_bytes() == config_before
    assert not (run_dir / LOCK_NAME).exists(), "the lock outlived the run"


@pytest.mark.slow
def test_lock_of_a_killed_run_is_taken_over(corpus: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = write_config(tiny_run(corpus, run_dir), tmp_path / "run.yaml")
    proc = start_cli(["train", str(cfg)], tmp_path / "killed.log")
    wait_for(lambda: (run_dir / "checkpoints" / "latest").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = read_lock(run_dir)
    assert left is not None and left.pid == proc.pid, "SIGKILL should leave the lock behind"
    assert not (run_dir / "checkpoints" / "s0-00000012").exists(), "the run ended before the kill"

    res = run_cli(["train", str(cfg)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"taking over the stale lock of {run_dir} (pid {proc.pid}" in res.stdout
    assert (run_dir / "checkpoints" / "s0-00000012").is_dir()
    assert not (run_dir / LOCK_NAME).exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(run_dir: Path, info: lock.LockInfo) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps(info.__dict__))


def test_lock_records_the_holder_and_is_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with run_lock(tmp_path / "run") as info:
        held = read_lock(tmp_path / "run")
        assert held == info
        assert (held.pid, held.host, held.slurm_job_id) == (
            __import__("os").getpid(),
            socket.gethostname(),
            "4242",
        )
        with pytest.raises(RunDirBusy, match=f"pid {held.pid} on host .*SLURM job 4242"):
            acquire(tmp_path / "run")
    assert read_lock(tmp_path / "run") is None


def test_lock_is_released_when_the_run_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyError), run_lock(tmp_path):
        assert read_lock(tmp_path) is not None
        raise KeyError("boom")
    assert read_lock(tmp_path) is None


def test_stale_locks_on_this_host_are_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    me = current_holder()
    dead = replace(me, pid=_dead_pid(), proc_start=None)  # e.g. this SLURM job before its requeue
    reused = replace(me, proc_start=(me.proc_start or 0) + 12345)  # our pid, another start time
    rebooted = replace(me, boot_id="0" * 32)
    for i, stale in enumerate((dead, reused, rebooted)):
        run_dir = tmp_path / str(i)
        _plant(run_dir, stale)
        assert lock.is_stale(stale)
        got = acquire(run_dir)
        assert read_lock(run_dir) == got != stale
        assert f"taking over the stale lock of {run_dir} (pid {stale.pid}" in capsys.readouterr().out
        release(run_dir, got)
        assert not (run_dir / LOCK_NAME).exists()
        assert list(run_dir.iterdir()) == []  # the stale lock moved aside was removed


def test_live_lock_and_lock_of_another_host_are_not_taken_over(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = replace(current_holder(), pid=sleeper.pid, proc_start=lock._proc_start(sleeper.pid))
        _plant(tmp_path / "live", live)
        with pytest.raises(RunDirBusy, match=f"pid {sleeper.pid} .*wait for it to end"):
            acquire(tmp_path / "live")
    finally:
        sleeper.kill()
        sleeper.wait()
    other = replace(current_holder(), host="node-elsewhere-17", pid=_dead_pid())
    _plant(tmp_path / "other", other)
    with pytest.raises(
        RunDirBusy, match=f"on host node-elsewhere-17.*remove {tmp_path / 'other' / LOCK_NAME}"
    ):
        acquire(tmp_path / "other")
    assert read_lock(tmp_path / "other") == other


def test_release_leaves_a_lock_that_is_not_ours(tmp_path: Path) -> None:
    theirs = replace(current_holder(), pid=_dead_pid())
    _plant(tmp_path, theirs)
    release(tmp_path, current_holder())
    assert read_lock(tmp_path) == theirs


def test_damaged_lock_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "READ_RETRY_S", 0.1)
    (tmp_path / LOCK_NAME).write_text('{"host": "a", "pi')
    with pytest.raises(lock.ConfigError, match="unreadable lock file.*remove it"):
        read_lock(tmp_path)


@pytest.mark.parametrize(
    ("env", "zero"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),
        ({"RANK": "3"}, False),
        ({"SLURM_PROCID": "0"}, True),
        ({"SLURM_PROCID": "5"}, False),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # a process Lightning started itself
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),
    ],
)
def test_only_global_rank_zero_takes_the_lock(
    env: dict[str, str], zero: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert lock.is_global_zero() is zero
    with run_lock(tmp_path) as info:
        assert (read_lock(tmp_path) is not None) is zero and (info is not None) is zero


def test_other_ranks_of_a_slurm_job_stop_when_another_job_holds_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "501")
    monkeypatch.setenv("SLURM_PROCID", "3")
    theirs = replace(current_holder(), slurm_job_id="499")
    _plant(tmp_path, theirs)
    with pytest.raises(RunDirBusy, match="SLURM job 499"):
        lock.follow_rank_zero(tmp_path, wait_s=0.2)
    ours = replace(current_holder(), pid=_dead_pid())
    assert ours.slurm_job_id == "501"
    _plant(tmp_path, ours)
    with run_lock(tmp_path) as info:  # our rank 0's lock: go on, holding nothing
        assert info is None
    assert read_lock(tmp_path) == ours
    (tmp_path / LOCK_NAME).unlink()
    lock.follow_rank_zero(tmp_path, wait_s=0.2)  # no lock (yet): go on
