"""The run-directory lock: one `skein train` at a time per run directory.

`<run_dir>/run.lock` is created with O_CREAT|O_EXCL by global rank 0 before anything else in the
run directory is written, and removed when the run ends (normally or by an exception; a process
killed with SIGKILL leaves it). It is a small JSON object:

    {"host": ..., "pid": ..., "proc_start": ..., "boot_id": ..., "started": "2026-...Z",
     "slurm_job_id": "123" | null, "command": "skein train ..."}

`proc_start` is the process start time from /proc/<pid>/stat (clock ticks since boot) and
`boot_id` the kernel's /proc/sys/kernel/random/boot_id: together with the pid they say whether the
holder still runs. A lock from this host whose process is gone (or whose pid now belongs to a
process started at another time, or to another boot) is stale and taken over with a one-line
message; this covers a SLURM requeue landing on the same host. A lock from another host is never
taken over: the message says how to remove it once that job is known to be gone.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from skein.train.typed import ConfigError

LOCK_NAME = "run.lock"
# A lock file seen empty or half-written is read again for this long before it counts as damaged.
READ_RETRY_S = 2.0
# How long a rank other than 0 waits for a lock of another job to be taken over or released.
FOLLOW_WAIT_S = 60.0


class RunDirBusy(ConfigError):
    """The run directory is locked by a run that is (or may be) alive."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds a run directory."""

    host: str
    pid: int
    started: str
    """UTC time the lock was taken, ISO 8601."""
    slurm_job_id: str | None
    command: str
    proc_start: int | None = None
    """Start time of the holder from /proc/<pid>/stat (clock ticks since boot), None off Linux."""
    boot_id: str | None = None

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"pid {self.pid} on host {self.host}{job}, since {self.started}"


def is_global_zero() -> bool:
    """Whether this process is global rank 0, decided from the environment before Lightning starts:
    every rank variable a launcher sets (torchrun's RANK, SLURM_PROCID, Lightning's LOCAL_RANK and
    NODE_RANK for the processes it starts itself) must be 0 or absent."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        value = os.environ.get(var, "").strip()
        if value and value != "0":
            return False
    return True


def _proc_start(pid: int) -> int | None:
    """Field 22 (starttime) of /proc/<pid>/stat, or None where unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def current_holder() -> LockInfo:
    """The LockInfo this process writes."""
    pid = os.getpid()
    return LockInfo(
        host=socket.gethostname(),
        pid=pid,
        started=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        slurm_job_id=os.environ.get("SLURM_JOB_ID") or None,
        command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        proc_start=_proc_start(pid),
        boot_id=_boot_id(),
    )


def _parse(text: str) -> LockInfo | None:
    try:
        d = json.loads(text)
        return LockInfo(
            host=str(d["host"]),
            pid=int(d["pid"]),
            started=str(d.get("started", "?")),
            slurm_job_id=d.get("slurm_job_id"),
            command=str(d.get("command", "")),
            proc_start=d.get("proc_start"),
            boot_id=d.get("boot_id"),
        )
    except (ValueError, KeyError, TypeError):
        return None


def read_lock(run_dir: str | Path) -> LockInfo | None:
    """The holder of `run_dir`, or None when it is not locked. A lock file that stays unreadable
    (not JSON, or missing fields) raises ConfigError naming it."""
    path = Path(run_dir) / LOCK_NAME
    deadline = time.monotonic() + READ_RETRY_S
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        info = _parse(text)
        if info is not None:
            return info
        if time.monotonic() > deadline:  # not a holder still writing its JSON: damaged
            raise ConfigError(
                f"{path}: unreadable lock file ({text[:60]!r}); if no skein train uses {run_dir}, remove it"
            )
        time.sleep(0.05)


def is_stale(info: LockInfo) -> bool:
    """Whether a lock from this host belongs to a process that no longer runs. Locks from other
    hosts are never stale here (their processes cannot be seen)."""
    if info.host != socket.gethostname():
        return False
    if info.boot_id and _boot_id() and info.boot_id != _boot_id():
        return True
    if not _alive(info.pid):
        return True
    now = _proc_start(info.pid)
    return info.proc_start is not None and now is not None and now != info.proc_start


def _create(path: Path, info: LockInfo) -> bool:
    """Create the lock file exclusively; False when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(asdict(info), indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_over(path: Path, stale: LockInfo) -> bool:
    """Move a stale lock aside, unless another process replaced it meanwhile (then put that back)."""
    aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another process moved it first: try to create ours
    moved = _parse(aside.read_text())
    if moved != stale:  # a fresh lock taken in between: restore it (link fails if one exists)
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink()
        return False
    aside.unlink()
    return True


def acquire(run_dir: str | Path) -> LockInfo:
    """Lock `run_dir` for this process (creating the directory). Raises RunDirBusy naming the
    holder when another live run has it, or when a lock from another host is found."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    me = current_holder()
    for _ in range(5):
        if _create(path, me):
            return me
        held = read_lock(run_dir)
        if held is None:
            continue  # released between our attempt and the read
        if held.host != me.host:
            raise RunDirBusy(
                f"{run_dir} is in use by another skein train ({held.describe()}); if that job is really "
                f"gone, remove {path} and start again, or choose another run.out_dir"
            )
        if not is_stale(held):
            raise RunDirBusy(
                f"{run_dir} is in use by another skein train ({held.describe()}); wait for it to end, "
                "or choose another run.out_dir"
            )
        if _take_over(path, held):
            print(
                f"skein train: taking over the stale lock of {run_dir} ({held.describe()}, no longer running)"
            )
    raise RunDirBusy(f"{path}: could not take the lock (it keeps changing); is another skein train starting?")


def release(run_dir: str | Path, info: LockInfo) -> None:
    """Remove the lock if it is still ours."""
    path = Path(run_dir) / LOCK_NAME
    try:
        held = _parse(path.read_text())
    except FileNotFoundError:
        return
    if held is not None and (held.host, held.pid, held.proc_start) == (info.host, info.pid, info.proc_start):
        path.unlink(missing_ok=True)


def follow_rank_zero(run_dir: str | Path, wait_s: float = FOLLOW_WAIT_S) -> None:
    """On a rank other than 0 of a SLURM job: stop when the run directory stays locked by another
    job (its rank 0 was refused and exits; without this the other ranks would wait for it in the
    process group until a timeout). Returns once the lock is this job's, or when no lock shows up
    (rank 0 may still be on its way; the process group then decides)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    deadline = time.monotonic() + wait_s
    while True:
        held = read_lock(run_dir)
        if held is None or held.slurm_job_id == job:
            return
        if time.monotonic() > deadline:
            raise RunDirBusy(f"{run_dir} is in use by another skein train ({held.describe()})")
        time.sleep(0.5)


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[LockInfo | None]:
    """Hold the lock of `run_dir` for the block on global rank 0; other ranks hold nothing, and
    under SLURM stop when another job holds it (`follow_rank_zero`)."""
    if not is_global_zero():
        follow_rank_zero(run_dir)
        yield None
        return
    info = acquire(run_dir)
    try:
        yield info
    finally:
        release(run_dir, info)
