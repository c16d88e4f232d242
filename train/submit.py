"""`skein submit`: renders an sbatch script for a run config and queues it with `sbatch`.

The job runs one `skein train` task per GPU (per CPU process for trainer.accelerator cpu) under
`srun`; it saves a checkpoint on SIGUSR1 (sent `slurm.signal_seconds` before the time limit) or on
SIGTERM, requeues itself and resumes. Before anything is queued, the resolved config is written to
`<run_dir>/submit/config.yaml` and the script to `<run_dir>/submit/job-<time>.sbatch`: the job and
every requeue of it run that file. Nodes and GPUs per node come from trainer.num_nodes and
trainer.devices; the --nodes / --gpus-per-node flags only check them (a mismatch is an error).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from skein.train.checkpoint import write_text_atomic
from skein.train.config import RunConfig, dump_config, load_config
from skein.train.typed import ConfigError

TEMPLATE = Path(__file__).resolve().parents[1] / "slurm" / "train.sbatch"


def submit(
    config: str,
    overrides: list[str] | None = None,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    partition: str | None = None,
    time: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    init_from: str | None = None,
    dry_run: bool = False,
) -> str | None:
    """Queue a run config as a Slurm job that checkpoints and requeues itself on preemption.
    Returns the job id (None for a dry run).

    Args:
        config: run YAML (see configs/).
        overrides: dotted overrides, as for skein train.
        nodes: must equal trainer.num_nodes (a check, not a setting).
        gpus_per_node: must equal trainer.devices (a check, not a setting).
        partition: overrides slurm.partition.
        time: overrides slurm.time, e.g. 2-00:00:00.
        account: overrides slurm.account.
        qos: overrides slurm.qos.
        init_from: weights to start from (passed to skein train).
        dry_run: print the script; write and queue nothing.
    """
    flags = {"partition": partition, "time": time, "account": account, "qos": qos}
    cfg = load_config(config, list(overrides or []) + [f"slurm.{k}={v}" for k, v in flags.items() if v])
    check_layout(cfg, nodes, gpus_per_node)
    run_dir = Path(cfg.run.out_dir).resolve()
    stamp = _now()
    paths = {
        "config": run_dir / "submit" / "config.yaml",
        "script": run_dir / "submit" / f"job-{stamp}.sbatch",
    }
    script = render(cfg, paths["config"], init_from=init_from)
    _check_writable(run_dir)
    if dry_run:
        print(script, end="")
        return None
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ConfigError("sbatch is not on PATH: run skein submit on a Slurm login node (or use --dry-run)")
    write_text_atomic(paths["config"], dump_config(cfg))
    write_text_atomic(paths["script"], script)
    res = subprocess.run([sbatch, "--parsable", str(paths["script"])], capture_output=True, text=True)
    if res.returncode != 0:
        raise ConfigError(f"sbatch refused {paths['script']}: {res.stderr.strip() or res.stdout.strip()}")
    job_id = res.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}: log {run_dir / f'slurm-{job_id}.log'}, script {paths['script']}")
    return job_id


def check_layout(cfg: RunConfig, nodes: int | None, gpus_per_node: int | None) -> None:
    """The flags must agree with the config: tokens per step, the data order and the resume
    position are planned for trainer.devices * trainer.num_nodes processes."""
    if nodes is not None and nodes != cfg.trainer.num_nodes:
        raise ConfigError(
            f"--nodes {nodes} but trainer.num_nodes={cfg.trainer.num_nodes}: pass --nodes "
            f"{cfg.trainer.num_nodes} or override trainer.num_nodes={nodes}"
        )
    if gpus_per_node is not None and gpus_per_node != cfg.trainer.devices:
        raise ConfigError(
            f"--gpus-per-node {gpus_per_node} but trainer.devices={cfg.trainer.devices}: pass "
            f"--gpus-per-node {cfg.trainer.devices} or override trainer.devices={gpus_per_node}"
        )


def render(
    cfg: RunConfig, config_copy: Path, init_from: str | None = None, workdir: Path | None = None
) -> str:
    """The sbatch script of a run: the template of slurm.template (or skein's) with its {{fields}}
    filled; `config_copy` is the resolved config the tasks train."""
    sc, tc = cfg.slurm, cfg.trainer
    run_dir = Path(cfg.run.out_dir).resolve()
    template = Path(sc.template) if sc.template else TEMPLATE
    if not template.is_file():
        raise ConfigError(f"slurm.template: {template} does not exist")
    command = [sys.executable, "-m", "skein.train.cli", "train", str(config_copy)]
    if init_from is not None:
        command += ["--init_from", init_from]  # relative to the workdir, as on the command line
    options = [f"--{k}={getattr(sc, k)}" for k in ("partition", "time", "account", "qos") if getattr(sc, k)]
    options += sc.sbatch_options
    fields = {
        "job_name": re.sub(r"[^A-Za-z0-9_.-]", "_", f"skein-{cfg.run.name}"),
        "nodes": str(tc.num_nodes),
        "tasks_per_node": str(tc.devices),
        "cpus_per_task": str(sc.cpus_per_task),
        "gpus": "" if tc.accelerator == "cpu" else f"#SBATCH --gpus-per-node={tc.devices}",
        "signal_seconds": str(sc.signal_seconds),
        "requeue": "--requeue" if sc.requeue else "--no-requeue",
        "log": str(run_dir / "slurm-%j.log"),
        "workdir": str((workdir or Path.cwd()).resolve()),
        "sbatch_options": "\n".join(f"#SBATCH {o}" for o in options),
        "env": "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sc.env.items() if v is not None),
        "command": shlex.join(command),
    }
    text = template.read_text()
    unknown = sorted(set(re.findall(r"\{\{(\w+)\}\}", text)) - set(fields))
    if unknown:
        raise ConfigError(f"{template}: unknown fields {unknown}; known: {sorted(fields)}")
    lines = [line for line in text.splitlines(keepends=True) if not _empty_field(line, fields)]
    return re.sub(r"\{\{(\w+)\}\}", lambda m: fields[m.group(1)], "".join(lines))


def _empty_field(line: str, fields: dict[str, str]) -> bool:
    """A line holding only a field that renders empty (no GPUs, no extra options) is dropped."""
    m = re.fullmatch(r"\{\{(\w+)\}\}\s*", line)
    return m is not None and not fields[m.group(1)]


def _check_writable(run_dir: Path) -> None:
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"run.out_dir: {run_dir} is not writable ({probe} refuses); choose another run.out_dir"
        )


def _now() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())
