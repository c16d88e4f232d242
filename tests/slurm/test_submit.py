"""`skein submit` without a cluster: the rendered sbatch script for 1 and 4 nodes (GPU and CPU
runs), the validation that runs before anything is queued, and the files a submission writes
(with a stand-in `sbatch` on PATH that records what it was given)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skein.train.cli import main
from skein.train.commands.submit import partition_nodes, render, submit
from skein.train.config import dump_config, load_config
from skein.train.typed import ConfigError
from tests.train.helpers import tiny_run, write_config


def _sbatch_options(script: str) -> list[str]:
    """The `#SBATCH` options in the order sbatch reads them (up to the first command)."""
    out = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH "):
            out.append(line.removeprefix("#SBATCH "))
        elif line and not line.startswith("#"):
            break
    return out


def _srun_line(script: str) -> list[str]:
    (line,) = [x for x in script.splitlines() if x.startswith("srun ")]
    return shlex.split(line.removesuffix("&"))


@pytest.mark.parametrize("nodes", [1, 4])
def test_gpu_script_has_one_task_per_gpu_the_signal_and_requeue(tmp_path: Path, nodes: int) -> None:
    cfg = tiny_run(
        "shards/x",
        tmp_path / "run",
        trainer={"accelerator": "gpu", "devices": 8, "num_nodes": nodes},
        stages=[{"ctx_len": 32, "tokens": 32 * 4 * 8 * nodes * 12, "micro_bsz": 4}],
        slurm={"partition": "h100", "time": "2-00:00:00", "qos": "high", "signal_seconds": 300},
    )
    cfg["run"]["name"] = "big run/7"
    path = write_config(cfg, tmp_path / "c.yaml")
    script = render(load_config(path), tmp_path / "run" / "submit" / "config.yaml", workdir=tmp_path)
    opts = _sbatch_options(script)
    assert opts[:4] == [
        "--job-name=skein-big_run_7",
        f"--nodes={nodes}",
        "--ntasks-per-node=8",
        "--cpus-per-task=8",
    ]
    for o in (
        "--gpus-per-node=8",
        "--signal=USR1@300",
        "--requeue",
        "--open-mode=append",
        "--partition=h100",
    ):
        assert o in opts
    assert "--time=2-00:00:00" in opts and "--qos=high" in opts
    assert not any(o.startswith("--account") for o in opts)
    assert f"--output={tmp_path / 'run' / 'slurm-%j.log'}" in opts
    assert f"--chdir={tmp_path}" in opts
    srun = _srun_line(script)
    assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert srun[2:] == [
        sys.executable,
        "-m",
        "skein.train.cli",
        "train",
        str(tmp_path / "run/submit/config.yaml"),
    ]
    assert "export NCCL_NVLS_ENABLE=0\n" in script and "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1\n" in script
    assert not re.search(r"\{\{\w+\}\}", script)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_cpu_script_has_no_gpus_and_the_configured_environment(tmp_path: Path) -> None:
    cfg = tiny_run(
        "shards/x",
        tmp_path / "run",
        trainer={"accelerator": "cpu", "devices": 2},
        slurm={
            "cpus_per_task": 3,
            "requeue": False,
            "env": {"OMP_NUM_THREADS": 3, "NCCL_SOCKET_IFNAME": "ib0 eth0"},
            "sbatch_options": ["--exclusive", "--mem=0"],
        },
    )
    script = render(
        load_config(write_config(cfg, tmp_path / "c.yaml")), tmp_path / "cc.yaml", init_from="w/m.pth"
    )
    opts = _sbatch_options(script)
    assert "--ntasks-per-node=2" in opts and "--cpus-per-task=3" in opts and "--no-requeue" in opts
    assert not any(o.startswith(("--gpus", "--gres")) for o in opts)
    assert opts[-2:] == ["--exclusive", "--mem=0"]
    assert "export OMP_NUM_THREADS=3\n" in script and "export NCCL_SOCKET_IFNAME='ib0 eth0'\n" in script
    assert _srun_line(script)[-2:] == ["--init_from", "w/m.pth"]


def _exports(script: str) -> dict[str, str]:
    return dict(
        line.removeprefix("export ").split("=", 1)
        for line in script.splitlines()
        if line.startswith("export ")
    )


def test_env_keys_add_to_the_defaults_and_null_removes_one(tmp_path: Path) -> None:
    cfg = tiny_run("shards/x", tmp_path / "run", trainer={"accelerator": "gpu"})
    path = write_config(cfg, tmp_path / "c.yaml")
    added = render(load_config(path, ["slurm.env.NCCL_DEBUG=WARN"]), tmp_path / "cc.yaml")
    assert {k: v for k, v in _exports(added).items() if k != "SRUN_CPUS_PER_TASK"} == {
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_DEBUG": "WARN",
    }
    changed = load_config(
        path, ["slurm.env.NCCL_NVLS_ENABLE=1", "slurm.env.TORCH_NCCL_ASYNC_ERROR_HANDLING=null"]
    )
    exports = _exports(render(changed, tmp_path / "cc.yaml"))
    assert exports["NCCL_NVLS_ENABLE"] == "1" and "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in exports
    # the resolved config keeps the removal, so the job's copy of it renders the same environment
    again = load_config(write_config(yaml.safe_load(dump_config(changed)), tmp_path / "resolved.yaml"))
    assert (
        again.slurm.env
        == changed.slurm.env
        == {"NCCL_NVLS_ENABLE": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": None}
    )


def test_a_template_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "mine.sbatch"
    template.write_text("#!/bin/bash\n#SBATCH --nodes={{nodes}}\n#SBATCH --gres={{gres}}\n")
    cfg = tiny_run("shards/x", tmp_path / "run", slurm={"template": str(template)})
    with pytest.raises(ConfigError, match=r"mine.sbatch: unknown fields \['gres'\]"):
        render(load_config(write_config(cfg, tmp_path / "c.yaml")), tmp_path / "cc.yaml")


@pytest.mark.parametrize(
    "slurm, message",
    [
        ({"time": "two days"}, "slurm.time: 'two days' is not a Slurm time"),
        ({"signal_seconds": 0}, "slurm: signal_seconds and cpus_per_task must be positive"),
        ({"env": {"A-B": "1"}}, "slurm.env: 'A-B' is not an environment variable name"),
        ({"sbatch_options": ["exclusive"]}, "slurm.sbatch_options: 'exclusive' should look like"),
        ({"partitoin": "x"}, "slurm.partitoin: unknown key \\(did you mean 'partition'"),
    ],
)
def test_bad_slurm_keys_name_the_key(tmp_path: Path, slurm: dict, message: str) -> None:
    cfg = tiny_run("shards/x", tmp_path / "run", slurm=slurm)
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(cfg, tmp_path / "c.yaml"))


@pytest.fixture
def fake_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `sbatch` on PATH that records its arguments and answers a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.args"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" > {record}\necho "4711;cluster"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_submit_writes_the_resolved_config_and_script_then_queues_them(
    tmp_path: Path, fake_sbatch: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    path = write_config(tiny_run("shards/x", run_dir, trainer={"devices": 2}), tmp_path / "c.yaml")
    job = submit(
        str(path), ["optim.lr_init=1e-3"], nodes=1, gpus_per_node=2, partition="debug", time="00:30:00"
    )
    assert job == "4711"
    (script,) = (run_dir / "submit").glob("job-*.sbatch")
    assert fake_sbatch.read_text().split() == ["--parsable", str(script)]
    saved = yaml.safe_load((run_dir / "submit" / "config.yaml").read_text())
    assert saved["optim"]["lr_init"] == 1e-3 and saved["slurm"]["partition"] == "debug"
    assert "#SBATCH --time=00:30:00" in script.read_text()
    assert str(run_dir / "submit" / "config.yaml") in _srun_line(script.read_text())
    assert not list((run_dir / "submit").glob("*.tmp"))
    out = capsys.readouterr().out
    assert "submitted job 4711" in out and str(run_dir / "slurm-4711.log") in out


def test_dry_run_prints_the_script_and_writes_nothing(
    tmp_path: Path, fake_sbatch: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    cfg = tiny_run("shards/x", run_dir, trainer={"num_nodes": 4}, stages=[{"ctx_len": 32, "micro_bsz": 4}])
    path = write_config(cfg, tmp_path / "c.yaml")
    assert submit(str(path), nodes=4, dry_run=True) is None
    assert "#SBATCH --nodes=4" in capsys.readouterr().out
    assert not run_dir.exists() and not fake_sbatch.exists()


def test_validation_errors_come_before_anything_is_queued(
    tmp_path: Path, fake_sbatch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_run(
        "shards/x", tmp_path / "run", trainer={"devices": 8}, stages=[{"ctx_len": 32, "micro_bsz": 4}]
    )
    path = write_config(cfg, tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="--gpus-per-node 4 but the override trainer.devices=8: give one"):
        submit(str(path), ["trainer.devices=8"], gpus_per_node=4)
    with pytest.raises(ConfigError, match="config file .*missing.yaml does not exist"):
        submit(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="slurm.time: 'soon'"):
        submit(str(path), time="soon")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    unwritable = write_config(tiny_run("shards/x", locked / "run"), tmp_path / "u.yaml")
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(ConfigError, match="run.out_dir: .*locked/run is not writable"):
            submit(str(unwritable))
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(ConfigError, match="run.out_dir: .*file/run is not writable"):
        submit(str(write_config(tiny_run("shards/x", blocked / "run"), tmp_path / "b.yaml")))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="sbatch is not on PATH"):
        submit(str(path))
    assert not fake_sbatch.exists() and not (tmp_path / "run").exists()


def test_flags_set_the_layout_of_the_submitted_run(tmp_path: Path, fake_sbatch: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = tiny_run(
        "shards/x", run_dir, trainer={"accelerator": "gpu"}, stages=[{"ctx_len": 32, "micro_bsz": 4}]
    )
    path = write_config(cfg, tmp_path / "c.yaml")
    assert submit(str(path), nodes=4, gpus_per_node=8) == "4711"
    saved = yaml.safe_load((run_dir / "submit" / "config.yaml").read_text())
    assert (saved["trainer"]["num_nodes"], saved["trainer"]["devices"]) == (4, 8)
    (script,) = (run_dir / "submit").glob("job-*.sbatch")
    opts = _sbatch_options(script.read_text())
    assert "--nodes=4" in opts and "--ntasks-per-node=8" in opts and "--gpus-per-node=8" in opts
    # left out, they are the config's
    script = render(load_config(path), run_dir / "submit" / "config.yaml")
    assert "--nodes=1" in _sbatch_options(script) and "--ntasks-per-node=1" in _sbatch_options(script)


def test_a_recorded_run_refuses_a_layout_that_cannot_keep_its_global_batch(
    tmp_path: Path, fake_sbatch: Path, capsys: pytest.CaptureFixture
) -> None:
    from skein.train.checkpoints.checkpoint import CheckpointMeta

    run_dir = tmp_path / "run"
    cfg = tiny_run(
        "shards/x", run_dir, trainer={"accelerator": "gpu"}, stages=[{"ctx_len": 32, "micro_bsz": 4}]
    )
    path = write_config(cfg, tmp_path / "c.yaml")
    name = "s0-00000007"
    (run_dir / "checkpoints" / name).mkdir(parents=True)
    # 7 steps of 2 nodes x 8 GPUs x 4 x 32 tokens
    meta = CheckpointMeta(
        stage_index=0, step=7, tokens_stage=7 * 2048, tokens_total=7 * 2048, stage_done=False
    )
    meta.tokens_per_step = [2048]
    meta.write(run_dir / "checkpoints" / name)
    (run_dir / "checkpoints" / "latest").write_text(name + "\n")
    with pytest.raises(SystemExit):
        main(["submit", str(path), "--nodes", "3", "--gpus-per-node", "8"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"skein submit: error: {run_dir} resumes on 3 node(s) x 8 processes, but the run's "
    )
    assert (
        "checkpoints record 2048 tokens per step, not a multiple of" in line
        and not (run_dir / "submit").exists()
    )
    # 4 nodes x 4 GPUs keep 2048 tokens per step, 1 node x 8 GPUs by accumulating 2 micro-batches
    assert submit(str(path), nodes=4, gpus_per_node=4) == "4711"
    assert submit(str(path), nodes=1, gpus_per_node=8) == "4711"


def _fake_sinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, rc: int = 0) -> None:
    bin_dir = tmp_path / "sinfo-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sinfo").write_text(f"#!/bin/sh\ncat <<'EOF'\n{table}EOF\nexit {rc}\n")
    (bin_dir / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


SINFO = """debug*|small1|4|(null)
debug*|small2|4|(null)
gpu|g1|64|gpu:h100:8(S:0-1)
gpu|g2|64|gpu:h100:8(S:0-1)
gpu|g3|32|gpu:h100:4(S:0)
"""


def test_a_request_no_node_can_satisfy_is_refused_before_it_is_queued(
    tmp_path: Path, fake_sbatch: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _fake_sinfo(tmp_path, monkeypatch, SINFO)
    cpu = tiny_run(
        "shards/x",
        tmp_path / "run",
        trainer={"accelerator": "cpu", "devices": 2},
        stages=[{"ctx_len": 32, "micro_bsz": 4}],
    )
    path = write_config(cpu, tmp_path / "cpu.yaml")
    with pytest.raises(SystemExit):  # the default 8 CPUs per task, 2 tasks, on 4-CPU nodes
        main(["submit", str(path)])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "skein submit: error: slurm.cpus_per_task=8 x 2 task(s) per node asks for 16 CPUs per node, but the "
        "nodes of the default partition have at most 4: set slurm.cpus_per_task=2"
    )
    assert submit(str(path), ["slurm.cpus_per_task=2"], nodes=2) == "4711"
    with pytest.raises(ConfigError, match="--nodes 3 .* but the default partition has 2 node"):
        submit(str(path), ["slurm.cpus_per_task=2"], nodes=3)

    gpu = tiny_run(
        "shards/x", tmp_path / "run", trainer={"accelerator": "gpu"}, stages=[{"ctx_len": 32, "micro_bsz": 4}]
    )
    path = write_config(gpu, tmp_path / "gpu.yaml")
    assert submit(str(path), nodes=2, gpus_per_node=8, partition="gpu") == "4711"
    with pytest.raises(
        ConfigError, match="--nodes 3 .* but partition gpu has 2 node.* with at least 64 CPUs and 8 GPUs"
    ):
        submit(str(path), nodes=3, gpus_per_node=8, partition="gpu")
    with pytest.raises(ConfigError, match="--gpus-per-node 16 .* at most 8 GPUs"):
        submit(str(path), gpus_per_node=16, partition="gpu")
    with pytest.raises(ConfigError, match="lists no nodes of partition 'h200' \\(partitions: debug, gpu\\)"):
        submit(str(path), partition="h200")
    assert capsys.readouterr().err == ""


def test_unknown_nodes_give_a_warning_and_the_job_is_queued(
    tmp_path: Path, fake_sbatch: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = write_config(tiny_run("shards/x", tmp_path / "run", trainer={"devices": 2}), tmp_path / "c.yaml")
    _fake_sinfo(tmp_path, monkeypatch, "", rc=1)
    assert submit(str(path)) == "4711"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "skein: warning: sinfo failed (1); not checked that 1 node(s) of the default partition"
    )
    assert line.endswith("have 16 CPUs each")
    # no controller to ask: sinfo's last (fatal) line is the reason, in one line
    (tmp_path / "sinfo-bin" / "sinfo").write_text(
        "#!/bin/sh\necho 'sinfo: error: fetch_config: DNS SRV lookup failed' >&2\n"
        "echo 'sinfo: fatal: Could not establish a configuration source' >&2\nexit 1\n"
    )
    assert submit(str(path)) == "4711"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "skein: warning: sinfo failed (sinfo: fatal: Could not establish a configuration source); "
    )
    calls = []

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, SINFO, "")

    nodes = partition_nodes("gpu", run=fake_run)
    assert calls[0][1:] == ["--noheader", "--Node", "--format=%P|%N|%c|%G"]
    assert [(n.name, n.cpus, n.gpus) for n in nodes] == [("g1", 64, 8), ("g2", 64, 8), ("g3", 32, 4)]


def test_cli_takes_config_option_dashed_overrides_and_either_flag_spelling(
    tmp_path: Path, fake_sbatch: Path, capsys: pytest.CaptureFixture
) -> None:
    """`skein submit` parses like every config command: --config FILE, key=value and --key value
    overrides, and `--dry-run` / `--dry_run`, `--gpus-per-node` / `--gpus_per_node` alike."""
    path = write_config(tiny_run("shards/x", tmp_path / "run"), tmp_path / "c.yaml")
    for argv in (
        ["--config", str(path), "--trainer.num_nodes", "2", "slurm.partition=big", "--nodes", "2",
         "--gpus-per-node", "1", "--dry-run"],
        [str(path), "--trainer.num_nodes=2", "--slurm.partition", "big", "--nodes", "2",
         "--gpus_per_node", "1", "--dry_run", "true"],
    ):  # fmt: skip
        main(["submit", *argv])
        script = capsys.readouterr().out
        assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=big" in script, script
    assert not (tmp_path / "run").exists() and not fake_sbatch.exists()
