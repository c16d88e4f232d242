"""The requeue after a preemption checkpoint, without a cluster: rank 0 of a Slurm batch job runs
`scontrol requeue $SLURM_JOB_ID` (a stand-in on PATH records it) only when the run stopped early
on the warning signal or its step budget and slurm.requeue is on (never after SIGTERM, which
`scancel` sends); and Lightning's own SIGUSR1 requeue stays switched off under srun."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import lightning as L
import pytest

from skein.train.loop.slurm import cluster_plugins, requeue_if_stopped

SRUN_TASK = {
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NAME": "skein-test",
    "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NNODES": "1",
    "SLURM_NODELIST": "vm",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


@pytest.fixture
def srun_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of task 0 of a 2-task job, and an `scontrol` that records its arguments."""
    for key, value in SRUN_TASK.items():
        monkeypatch.setenv(key, value)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.args"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.parametrize("signum", [signal.SIGUSR1, None])  # the warning signal; run.stop_after_steps
def test_rank_zero_requeues_a_stopped_run(
    srun_task: Path, signum: int | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    ckpt = "runs/x/checkpoints/s1-00000008"
    stopped = {"interrupted": True, "signal": signum, "checkpoint": ckpt, "steps": 8, "stages_done": 1}
    assert requeue_if_stopped(stopped, requeue=True)
    assert srun_task.read_text().split() == ["requeue", "77"]
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(
        f"skein: checkpoint saved at step 8 of stage 2 ({ckpt}); requeueing job 77 as restart 3, which resumes"
    )
    assert "exit code 143 are expected" in line


def test_the_job_script_explains_exit_143() -> None:
    """The end of slurm/train.sbatch: a step ended by SIGTERM (what a requeue sends) is said to be
    expected; any other exit code is reported as it is."""
    from skein.train.commands.submit import TEMPLATE

    text = TEMPLATE.read_text()
    tail = text[text.index("case $rc in") : text.index("exit $rc")]
    out = {}
    for rc in (143, 1, 0):
        res = subprocess.run(
            ["bash", "-c", f"rc={rc}\n{tail}"], env={"SLURM_JOB_ID": "9", "PATH": os.environ["PATH"]},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        out[rc] = res.stdout
    assert out[143].startswith(
        "skein: job 9 step exited with 143 (SIGTERM: expected when the job is requeued"
    )
    assert out[1].startswith("skein: job 9 step exited with 1 at ") and "expected" not in out[1]
    assert out[0].startswith("skein: job 9 step exited with 0 at ")


@pytest.mark.parametrize(
    "summary, requeue, env",
    [
        ({"interrupted": False}, True, {}),  # finished: nothing to requeue
        ({"interrupted": True, "signal": signal.SIGTERM}, True, {}),  # scancel, or preempted: Slurm decides
        ({"interrupted": True}, False, {}),  # slurm.requeue off
        ({"interrupted": True}, True, {"SLURM_PROCID": "1"}),  # not rank 0
        ({"interrupted": True}, True, {"SLURM_JOB_NAME": "interactive"}),  # salloc shell, no batch job
    ],
)
def test_no_requeue_otherwise(
    srun_task: Path, monkeypatch: pytest.MonkeyPatch, summary: dict, requeue: bool, env: dict
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not requeue_if_stopped(summary, requeue)
    assert not srun_task.exists()


def test_no_requeue_outside_slurm(srun_task: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in SRUN_TASK:
        monkeypatch.delenv(key)
    assert cluster_plugins() == []
    assert not requeue_if_stopped({"interrupted": True}, True)
    assert not srun_task.exists()


def _usr1_handler_after_setup(plugins: list) -> object:
    trainer = L.Trainer(
        accelerator="cpu", devices=2, plugins=plugins, logger=False, enable_checkpointing=False
    )
    before = signal.getsignal(signal.SIGUSR1)
    trainer._signal_connector.register_signal_handlers()
    try:
        return signal.getsignal(signal.SIGUSR1) is not before
    finally:
        trainer._signal_connector.teardown()
        signal.signal(signal.SIGUSR1, before)


def test_lightning_keeps_slurm_ranks_but_not_its_own_requeue(srun_task: Path) -> None:
    (env,) = cluster_plugins()
    assert not env.auto_requeue
    assert (env.world_size(), env.global_rank(), env.main_address) == (2, 0, "vm")
    # Left to itself, Lightning detects Slurm and installs a SIGUSR1 handler that saves its own
    # checkpoint and requeues; with skein's plugin, SIGUSR1 is left to skein's checkpoint callback.
    assert _usr1_handler_after_setup([])
    assert not _usr1_handler_after_setup(cluster_plugins())
