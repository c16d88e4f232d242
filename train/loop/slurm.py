"""Running under Slurm: Lightning's cluster environment for `srun` tasks (with Lightning's own
requeue switched off), and the requeue of a job whose run stopped early with a checkpoint.

On SIGUSR1 (the warning before the time limit) the checkpoint callback saves and stops every
rank; then rank 0 runs `scontrol requeue $SLURM_JOB_ID` and the requeued job resumes from that
checkpoint. Lightning's
SLURMEnvironment would otherwise install its own SIGUSR1 handler that saves a second, differently
laid out checkpoint and requeues on its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Any

import torch.distributed as dist

from skein.train.checkpoints.lock import is_global_zero


def in_slurm_job() -> bool:
    """True inside an `srun` task of a batch job (not an interactive allocation)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return "SLURM_JOB_ID" in os.environ and SLURMEnvironment.detect()


def cluster_plugins() -> list[Any]:
    """Trainer plugins: Slurm's ranks and master address under srun, without Lightning's requeue."""
    if not in_slurm_job():
        return []
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def requeue_message(summary: dict[str, Any], job_id: str, restart: int) -> str:
    """The one line that says a stop with a checkpoint is followed by a requeue, and that the step's
    end Slurm then logs (CANCELLED DUE TO JOB REQUEUE, srun's Terminated, exit 143) is expected."""
    ckpt = summary.get("checkpoint")
    where = f"step {summary.get('steps', '?')} of stage {summary.get('stages_done', 0) + 1}"
    return (
        f"skein: checkpoint saved at {where} ({ckpt}); requeueing job {job_id} as restart {restart}, "
        "which resumes from it. Slurm now ends this step: its CANCELLED ... DUE TO JOB REQUEUE, "
        "`srun: error: ... Terminated` and exit code 143 are expected"
    )


def requeue_if_stopped(summary: dict[str, Any], requeue: bool) -> bool:
    """After a run stopped early with a checkpoint (summary["interrupted"]) by the warning signal
    SIGUSR1 or by run.stop_after_steps, requeue this Slurm job from rank 0 once every rank is
    done. Not after SIGTERM: that is `scancel` (which a requeue would undo) or a preemption, which
    Slurm requeues itself. Returns whether a requeue was asked for."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not (summary.get("interrupted") and requeue and job_id and in_slurm_job()):
        return False
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank has left training; the checkpoint is already complete
    if not is_global_zero() or summary.get("signal") == signal.SIGTERM:
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        print("skein: scontrol is not on PATH; the job is not requeued", file=sys.stderr)
        return False
    # Said first: Slurm ends this process (SIGTERM) as it requeues the job.
    print(requeue_message(summary, job_id, int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1), flush=True)
    res = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"skein: scontrol requeue {job_id} failed: {res.stderr.strip()}", file=sys.stderr)
        return False
    return True
