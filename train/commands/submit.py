"""`skein submit`: renders an sbatch script for a run config and queues it with `sbatch`.

The job runs one `skein train` task per GPU (per CPU process for trainer.accelerator cpu) under
`srun`; it saves a checkpoint on SIGUSR1 (sent `slurm.signal_seconds` before the time limit) or on
SIGTERM, requeues itself and resumes. Before anything is queued, the resolved config is written to
`<run_dir>/submit/config.yaml` and the script to `<run_dir>/submit/job-<time>.sbatch`: the job and
every requeue of it run that file. --nodes and --gpus-per-node set trainer.num_nodes and
trainer.devices of the submitted run (the config's values when left out); a run directory that
already holds checkpoints keeps its global batch, so a layout that cannot keep it is refused.
Where `sinfo` can tell what the partition's nodes have, a request no node can satisfy (CPUs, GPUs,
nodes) is refused before it is queued; where it cannot, a warning says what was not checked.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from skein.train.config import RunConfig, dump_config, load_config
from skein.train.plan import stage_plans
from skein.train.typed import ConfigError

TEMPLATE = Path(__file__).resolve().parents[2] / "slurm" / "train.sbatch"


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

    Args:
        config: run YAML (see configs/).
        overrides: dotted overrides, as for skein train.
        nodes: nodes to run on; sets trainer.num_nodes (default: the config's).
        gpus_per_node: tasks per node, one per GPU (per process on the CPU); sets trainer.devices
            (default: the config's).
        partition: overrides slurm.partition.
        time: overrides slurm.time, e.g. 2-00:00:00.
        account: overrides slurm.account.
        qos: overrides slurm.qos.
        init_from: weights to start from (passed to skein train).
        dry_run: print the script; write and queue nothing.
    """
    flags = {"partition": partition, "time": time, "account": account, "qos": qos}
    overrides = list(overrides or [])
    layout = layout_overrides(overrides, nodes, gpus_per_node)
    cfg = load_config(config, overrides + layout + [f"slurm.{k}={v}" for k, v in flags.items() if v])
    run_dir = Path(cfg.run.out_dir).resolve()
    check_recorded_batch(cfg, run_dir)
    check_resources(cfg, partition_nodes(cfg.slurm.partition))
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
    from skein.train.checkpoints.checkpoint import write_text_atomic  # imports Lightning: after every check

    write_text_atomic(paths["config"], dump_config(cfg))
    write_text_atomic(paths["script"], script)
    res = subprocess.run([sbatch, "--parsable", str(paths["script"])], capture_output=True, text=True)
    if res.returncode != 0:
        raise ConfigError(f"sbatch refused {paths['script']}: {res.stderr.strip() or res.stdout.strip()}")
    job_id = res.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}: log {run_dir / f'slurm-{job_id}.log'}, script {paths['script']}")
    return job_id


def layout_overrides(overrides: list[str], nodes: int | None, gpus_per_node: int | None) -> list[str]:
    """The overrides --nodes and --gpus-per-node stand for; a flag that contradicts an override
    of the same key is refused (the user said two different things)."""
    out = []
    for flag, key, value in (
        ("--nodes", "trainer.num_nodes", nodes),
        ("--gpus-per-node", "trainer.devices", gpus_per_node),
    ):
        if value is None:
            continue
        given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
        if given and str(value) != given[-1].strip():
            raise ConfigError(f"{flag} {value} but the override {key}={given[-1]}: give one of them")
        out.append(f"{key}={value}")
    return out


def check_recorded_batch(cfg: RunConfig, run_dir: Path) -> None:
    """A run directory with checkpoints resumes with the global batch its checkpoints record: the
    layout must divide it (as `skein train` would check, but before the job waits in the queue)."""
    if not (run_dir / "checkpoints").is_dir():
        return
    from skein.train.checkpoints.checkpoint import latest_checkpoint

    found = latest_checkpoint(run_dir)
    if found is None:
        return
    world = f"{cfg.trainer.num_nodes} node(s) x {cfg.trainer.devices}"
    try:
        stage_plans(cfg, found[1].tokens_per_step)
    except ConfigError as e:
        raise ConfigError(f"{run_dir} resumes on {world} processes, but {e}") from e


@dataclass
class NodeShape:
    """What one node of a partition has, as `sinfo` reports it."""

    name: str
    cpus: int
    gpus: int


def partition_nodes(
    partition: str | None, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> list[NodeShape] | str:
    """The nodes of `partition` (None: the cluster's default partition) as `sinfo` reports them,
    or the reason they cannot be known (no sinfo, sinfo failed); a partition sinfo does not list
    is refused."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return "sinfo is not on PATH"
    try:
        res = run(
            [sinfo, "--noheader", "--Node", "--format=%P|%N|%c|%G"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed ({e})"
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1:]  # sinfo's fatal line comes last
        return f"sinfo failed ({last[0] if last else res.returncode})"
    nodes, names = [], set()
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        name = parts[0].rstrip("*")
        names.add(name)
        if (partition is None and parts[0].endswith("*")) or name == partition:
            gpus = sum(int(m) for m in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", parts[3]))
            nodes.append(NodeShape(parts[1], int(parts[2]), gpus))
    if not nodes:
        which = f"partition {partition!r}" if partition else "a default partition"
        raise ConfigError(
            f"sinfo lists no nodes of {which} (partitions: {', '.join(sorted(names)) or 'none'})"
        )
    return nodes


def check_resources(cfg: RunConfig, nodes: list[NodeShape] | str) -> None:
    """Refuse a request that no node of the partition can satisfy (it would stay PENDING for ever);
    when the nodes are unknown (`nodes` is the reason), warn that nothing was checked."""
    sc, tc = cfg.slurm, cfg.trainer
    cpus = tc.devices * sc.cpus_per_task
    gpus = 0 if tc.accelerator == "cpu" else tc.devices
    where = f"partition {sc.partition}" if sc.partition else "the default partition"
    if isinstance(nodes, str):
        print(
            f"skein: warning: {nodes}; not checked that {tc.num_nodes} node(s) of {where} have {cpus} CPUs"
            + (f" and {gpus} GPUs" if gpus else "")
            + " each",
            file=sys.stderr,
        )
        return
    most_gpus = max(n.gpus for n in nodes)
    if gpus > most_gpus:
        raise ConfigError(
            f"--gpus-per-node {gpus} (trainer.devices), but the nodes of {where} have at most {most_gpus} GPUs"
        )
    most_cpus = max(n.cpus for n in nodes)
    if cpus > most_cpus:
        fit = most_cpus // tc.devices
        fix = f"set slurm.cpus_per_task={fit}" if fit else "use fewer tasks per node (--gpus-per-node)"
        raise ConfigError(
            f"slurm.cpus_per_task={sc.cpus_per_task} x {tc.devices} task(s) per node asks for {cpus} CPUs per "
            f"node, but the nodes of {where} have at most {most_cpus}: {fix}"
        )
    enough = [n for n in nodes if n.cpus >= cpus and n.gpus >= gpus]
    if tc.num_nodes > len(enough):
        raise ConfigError(
            f"--nodes {tc.num_nodes} (trainer.num_nodes), but {where} has {len(enough)} node(s) with at "
            f"least {cpus} CPUs" + (f" and {gpus} GPUs" if gpus else "")
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
