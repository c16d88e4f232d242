"""A one-node Slurm cluster on loopback for the tests: munged, slurmctld and slurmd started in
the foreground as children of the test (Debian's slurm-wlm and munge, installed with apt-get when
missing and running as root), every file under one temporary directory, every daemon stopped by
`stop()`. Client commands find the cluster through SLURM_CONF (see `env`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def install() -> str | None:
    """Install slurm-wlm and munge when a tool is missing; the reason it cannot, or None."""
    if all(_sbin(d) for d in DAEMONS):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "Slurm is not installed, and installing it needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            return f"{' '.join(cmd)} failed: {res.stderr.strip()[-500:]}"
    missing = [d for d in DAEMONS if not _sbin(d)]
    return f"slurm-wlm installed but {missing} not found" if missing else None


class LocalSlurm:
    """munged + slurmctld + slurmd for one node named after this host, partition `debug`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        # munged checks that its socket directory belongs to the munge user and that nobody
        # else can write to it or its parents: a private directory under /run, not the test's tmp.
        self.munge_dir = Path(
            tempfile.mkdtemp(prefix="skein-munge-", dir="/run" if os.access("/run", os.W_OK) else None)
        )

    def start(self, timeout: float = 60) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run([_sbin("mungekey"), "-c", "-k", str(key)], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
        shutil.chown(self.munge_dir, "munge", "munge")
        self.munge_dir.chmod(0o755)
        sock = self.munge_dir / "munge.socket"
        self._spawn(
            [
                _sbin("runuser"),
                "-u",
                "munge",
                "--",
                _sbin("munged"),
                "-F",
                f"--socket={sock}",
                f"--pid-file={self.munge_dir / 'munged.pid'}",
                f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
            "munged.out",
        )
        self._wait(sock.exists, timeout, "munged did not create its socket")
        for d in ("state", "spool"):
            (self.root / d).mkdir(exist_ok=True)
        self.conf.write_text(self._conf(sock))
        self._spawn([_sbin("slurmctld"), "-D", "-f", str(self.conf)], "slurmctld.out")
        self._spawn([_sbin("slurmd"), "-D", "-f", str(self.conf)], "slurmd.out")
        self._wait(self._idle, timeout, f"the node did not come up idle; see {self.root}/*.log")

    def _conf(self, sock: Path) -> str:
        r = self.root
        return "\n".join(
            [
                "ClusterName=skeintest",
                f"SlurmctldHost={self.host}(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={sock}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                "JobRequeue=1",
                "ReturnToService=2",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SchedulerType=sched/backfill",
                "KillWait=60",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool'}",
                f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'slurmd.pid'}",
                f"SlurmctldLogFile={r / 'slurmctld.log'}",
                f"SlurmdLogFile={r / 'slurmd.log'}",
                f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _spawn(self, cmd: list, log: str) -> None:
        out = open(self.root / log, "w")
        self.procs.append(
            subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=self.env)
        )

    def _wait(self, predicate, timeout: float, message: str) -> None:
        t0 = time.time()
        while not predicate():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.time() - t0 > timeout:
                raise RuntimeError(f"{message} (exited: {dead})")
            time.sleep(0.5)

    def _idle(self) -> bool:
        res = self.run(["sinfo", "-h", "-o", "%t"], check=False)
        return res.returncode == 0 and res.stdout.strip() == "idle"

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
        return res

    def job_field(self, job_id: str, key: str) -> str:
        """One `Key=value` of `scontrol show job`."""
        out = self.run(["scontrol", "show", "job", job_id]).stdout
        for word in out.split():
            if word.startswith(key + "="):
                return word.split("=", 1)[1]
        raise KeyError(f"{key} not in scontrol show job {job_id}")

    def release(self, job_id: str) -> None:
        """Start a requeued job now instead of after its BeginTime hold. Once the node is idle,
        wait two seconds more: slurmd refuses credentials issued in the second it revoked the
        job's previous ones ("Job credential revoked"), and the job would fail."""
        self._wait(self._idle, 60, f"the node to be idle before releasing job {job_id}")
        time.sleep(2)
        self.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (in that order)."""
        if self.conf.exists():
            self.run(["scancel", "--full", "--user=root"], check=False)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.munge_dir, ignore_errors=True)
