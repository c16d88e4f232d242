"""Resuming with a changed config: a change the checkpoint cannot take is refused before
config.yaml is touched, naming each key; an allowed change is applied and said in one line;
--init_from on a run that has checkpoints is refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from skein.train.checkpoints.checkpoint import resume_checkpoint
from skein.train.checkpoints.resume_check import check_resume_config, classify, write_run_config
from skein.train.config import ConfigError, RunConfig
from skein.train.loop.run import train_from_config
from skein.train.parallel.execution import check_checkpoint_engine
from skein.train.typed import from_dict
from tests.train.helpers import losses, run_cli, tiny_run, write_config

STAGE = {"ctx_len": 32, "tokens": 32 * 8 * 12, "micro_bsz": 4, "tokens_per_step": 256}


def _cfg(d: dict) -> RunConfig:
    return from_dict(RunConfig, copy.deepcopy(d))


@pytest.mark.slow
def test_resume_refuses_a_model_change_before_writing_and_takes_an_allowed_one(
    corpus: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    base = tiny_run(corpus, run_dir)
    res = run_cli(["train", str(write_config(base, tmp_path / "base.yaml"))])
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run_dir / "checkpoints" / "s0-00000012" / "meta.json").is_file()
    stored = (run_dir / "config.yaml").read_bytes()

    wider = tiny_run(corpus, run_dir, model={**base["model"], "d_model": 64})
    wider["stages"] = [{**STAGE, "lr_init": 1e-3}]
    res = run_cli(["train", str(write_config(wider, tmp_path / "wider.yaml"))])
    assert res.returncode != 0
    message = res.stderr.strip().splitlines()[-1]
    assert "model.d_model: 32 -> 64" in message and "stages[0].lr_init: None -> 0.001" in message, message
    assert "size mismatch" not in res.stderr
    assert (run_dir / "config.yaml").read_bytes() == stored

    res = run_cli(
        ["train", str(tmp_path / "base.yaml"), "--init_from", str(run_dir / "checkpoints" / "s0-00000012")]
    )
    assert res.returncode != 0 and "--init_from" in res.stderr and "already holds checkpoints" in res.stderr
    assert (run_dir / "config.yaml").read_bytes() == stored

    # A second stage and another logging cadence: allowed, said in one line, and trained.
    more = tiny_run(corpus, run_dir, log={"every_steps": 2})
    more["stages"] = [STAGE, {**STAGE, "tokens": 256 * 4, "lr_init": 1e-3, "lr_final": 1e-4}]
    res = run_cli(["train", str(write_config(more, tmp_path / "more.yaml"))])
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if "with a changed config" in x)
    assert "log.every_steps: 1 -> 2" in line and "stages[1].ctx_len: <absent> -> 32" in line
    assert "model." not in line
    assert (run_dir / "config.yaml").read_bytes() != stored
    assert (
        _cfg(more).to_dict()
        == _cfg(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())).to_dict()
    )
    assert max(step for stage, step in losses(run_dir) if stage == 1) == 4


def _two_stage(tmp_path: Path) -> dict:
    d = tiny_run("data/x", tmp_path)
    d["stages"] = [{**STAGE, "lr_init": 2e-3, "lr_final": 2e-4}, {**STAGE, "ctx_len": 64}]
    return d


@pytest.mark.parametrize(
    ("change", "stage_index", "refused"),
    [
        (lambda d: d["model"].update(n_layer=3), 1, True),
        (lambda d: d["model"].update(d_ffn=128), 0, False),  # the default spelled out: no change
        (lambda d: d["run"].update(seed=1), 0, True),
        (lambda d: d["data"].update(train=["data/y"]), 0, True),
        (lambda d: d["data"].update(sample_offset=1), 0, True),
        (lambda d: d["data"].update(pass_order="repeat"), 1, True),
        (lambda d: d["schedule"].update(kind="rwkv_lm_cosine"), 0, True),
        (lambda d: d["optim"].update(weight_decay=0.1), 0, True),
        (lambda d: d["schedule"].update(warmup_tokens=5), 0, True),
        (lambda d: d["trainer"].update(precision="bf16-mixed"), 0, True),
        (lambda d: d["trainer"].update(precision="32", strategy="ddp"), 0, False),  # CPU: resolves the same
        (lambda d: d["trainer"].update(zero_stage=3), 0, False),  # not DeepSpeed on the CPU
        (lambda d: d["trainer"].update(strategy="deepspeed"), 0, True),
        (lambda d: (d["trainer"].update(devices=2), d["stages"][1].update(tokens_per_step=512)), 0, False),
        (lambda d: d["stages"][0].update(lr_init=3e-3), 0, True),  # the stage in progress
        (lambda d: d["stages"][0].update(micro_bsz=2), 1, True),  # a stage already done
        (lambda d: d["stages"][1].update(lr_init=1e-3, ctx_len=128, tokens_per_step=512), 0, False),
        (lambda d: d["stages"][1].update(lr_init=1e-3), 1, True),
        (lambda d: d["stages"].pop(), 0, False),
        (lambda d: d["stages"].pop(), 1, True),
        # stage 0 sets its own lr, so the default lr only reaches stage 1
        (lambda d: d["optim"].update(lr_init=5e-3), 0, False),
        (lambda d: d["optim"].update(lr_init=5e-3), 1, True),
        (lambda d: d["checkpoint"].update(every_steps=7, keep_last=9), 1, False),
        (lambda d: d["log"].update(every_steps=50, progress_bar=True), 1, False),
        (lambda d: d["data"].update(num_workers=3), 1, False),
        (lambda d: d["run"].update(stop_after_steps=10, name="again"), 1, False),
        # resubmitted elsewhere: the job's settings hold nothing a checkpoint depends on
        (lambda d: d.update(slurm={"partition": "big", "time": "04:00:00", "cpus_per_task": 4}), 1, False),
    ],
)
def test_which_changes_a_resume_takes(tmp_path: Path, change, stage_index: int, refused: bool) -> None:
    old = _two_stage(tmp_path)
    new = copy.deepcopy(old)
    change(new)
    bad, ok = classify(_cfg(old), _cfg(new), stage_index)
    if refused:
        assert bad and not ok, (bad, ok)
    else:
        assert not bad, bad
        assert bool(ok) is (new["model"] == old["model"]), ok


def test_refusal_names_every_key_and_leaves_config_yaml(tmp_path: Path) -> None:
    old = _two_stage(tmp_path)
    write_run_config(_cfg(old), tmp_path)
    stored = (tmp_path / "config.yaml").read_bytes()
    new = copy.deepcopy(old)
    new["model"]["d_model"] = 48
    new["stages"][0]["ctx_len"] = 16
    new["log"]["every_steps"] = 3
    ckpt = tmp_path / "checkpoints" / "s0-00000005"
    with pytest.raises(ConfigError) as e:
        check_resume_config(_cfg(new), tmp_path, ckpt, 0, None)
    msg = str(e.value)
    assert "\n" not in msg and "s0-00000005" in msg
    assert "model.d_model: 32 -> 48" in msg and "stages[0].ctx_len: 32 -> 16" in msg
    assert "log.every_steps" not in msg
    assert (tmp_path / "config.yaml").read_bytes() == stored


def test_allowed_change_is_said_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    old = _two_stage(tmp_path)
    write_run_config(_cfg(old), tmp_path)
    new = copy.deepcopy(old)
    new["stages"][1]["lr_init"] = 1e-3
    new["checkpoint"]["every_steps"] = 50
    ckpt = tmp_path / "checkpoints" / "s0-00000012"
    assert check_resume_config(_cfg(new), tmp_path, ckpt, 0, None) == [
        "checkpoint.every_steps: 3 -> 50",
        "stages[1].lr_init: None -> 0.001",
    ]
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        f"skein train: resuming {tmp_path} with a changed config: checkpoint.every_steps: 3 -> 50; "
        "stages[1].lr_init: None -> 0.001"
    ]


def test_init_from_is_refused_once_checkpoints_exist_and_anything_goes_before(tmp_path: Path) -> None:
    old = _two_stage(tmp_path)
    write_run_config(_cfg(old), tmp_path)
    new = copy.deepcopy(old)
    new["model"]["d_model"] = 48
    with pytest.raises(ConfigError, match="--init_from w.pth: .* already holds checkpoints"):
        check_resume_config(_cfg(old), tmp_path, tmp_path / "checkpoints" / "s0-00000003", 0, "w.pth")
    # no checkpoint yet: the run starts over, so neither is refused
    assert check_resume_config(_cfg(new), tmp_path, None, 0, "w.pth") == []


def test_unreadable_stored_config_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: {arch: llama}\nstages: [{ctx_len: -1}]\n")
    with pytest.raises(ConfigError, match="config.yaml.*cannot be read to check this resume"):
        check_resume_config(_cfg(_two_stage(tmp_path)), tmp_path, tmp_path / "checkpoints" / "s0-1", 0, None)


def test_mid_stage_checkpoint_resumes_only_under_the_engine_that_wrote_it(
    corpus: str, tmp_path: Path
) -> None:
    """A real checkpoint written by one device (a model.ckpt file) is refused for DeepSpeed, and a
    DeepSpeed-shaped one (model.ckpt a directory of shards) for one device, naming the fix."""
    cfg = from_dict(RunConfig, tiny_run(corpus, tmp_path / "run", run={"stop_after_steps": 3}))
    summary = train_from_config(cfg)
    assert summary["interrupted"] and summary["steps"] == 3  # stopped mid-stage
    ckpt = resume_checkpoint(tmp_path / "run")[0] / "model.ckpt"
    assert ckpt.is_file()
    check_checkpoint_engine(ckpt, deepspeed=False)
    with pytest.raises(
        ConfigError, match=r"model.ckpt: written by DDP or one device.*trainer.strategy=single or ddp"
    ):
        check_checkpoint_engine(ckpt, deepspeed=True)
    shards = tmp_path / "ds" / "model.ckpt"
    (shards / "checkpoint").mkdir(parents=True)
    check_checkpoint_engine(shards, deepspeed=True)
    with pytest.raises(ConfigError, match="written by DeepSpeed.*trainer.strategy=deepspeed"):
        check_checkpoint_engine(shards, deepspeed=False)
