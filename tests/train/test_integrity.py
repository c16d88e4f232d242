"""Nothing silently wrong: checksummed checkpoints (a damaged one is refused and the resume falls
back to the newest that verifies), a non-finite loss stops before any save or skips its step,
run.stop_after_steps stops, and a save needs no
system temp directory."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch

from skein.train.checkpoints.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    latest_checkpoint,
    resume_checkpoint,
    save_checkpoint,
)
from skein.train.config import load_config
from skein.train.loop.module import NonFiniteLossError
from skein.train.loop.run import train_from_config
from tests.train.helpers import metric_rows, run_cli, tiny_run, write_config
from tests.train.test_checkpoint import FakeTrainer


def _meta(step: int) -> CheckpointMeta:
    return CheckpointMeta(stage_index=0, step=step, tokens_stage=step, tokens_total=step, stage_done=False)


def _damage(path: Path, n: int = 4096) -> None:
    """Overwrite n bytes in the middle of a file with random bytes."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(max(0, size // 2 - n // 2))
        f.write(os.urandom(min(n, size)))


def _run(corpus: str, tmp_path: Path, name: str = "run", arch: str = "llama", **sections):
    cfg = tiny_run(corpus, tmp_path / name, arch, **sections)
    return load_config(write_config(cfg, tmp_path / f"{name}.yaml"))


def test_damaged_checkpoint_is_refused_and_the_previous_one_used(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    trainer = FakeTrainer()
    for step in (10, 20, 30):
        save_checkpoint(trainer, tmp_path, _meta(step), keep_last=2)
    ckpts = tmp_path / "checkpoints"
    meta = CheckpointMeta.read(ckpts / "s0-00000030")
    assert set(meta.files) == {"model.ckpt"} and len(meta.files["model.ckpt"]) == 64
    _damage(ckpts / "s0-00000030" / "model.ckpt", n=8)
    path, meta = resume_checkpoint(tmp_path)
    assert path.name == "s0-00000020" and meta.step == 20
    err = capsys.readouterr().err
    assert "refused checkpoint s0-00000030" in err and "s0-00000030/model.ckpt does not match" in err
    assert "resuming from s0-00000020" in err
    # kept for inspection, out of the way of resumes and pruning; `latest` names the one used
    assert (ckpts / "s0-00000030.refused" / "model.ckpt").exists()
    assert latest_checkpoint(tmp_path)[0].name == "s0-00000020"
    save_checkpoint(trainer, tmp_path, _meta(25), keep_last=1)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "s0-00000025", "s0-00000030.refused"]


def test_unreadable_meta_and_no_good_checkpoint_are_named(tmp_path: Path) -> None:
    trainer = FakeTrainer()
    for step in (10, 20):
        save_checkpoint(trainer, tmp_path, _meta(step), keep_last=2)
    ckpts = tmp_path / "checkpoints"
    (ckpts / "s0-00000020" / "meta.json").write_text('{"stage_index": 0, "st')
    (ckpts / "s0-00000010" / "model.ckpt").write_bytes(b"weights and optimizer, truncated")
    with pytest.raises(CheckpointError, match="no checkpoint verifies") as e:
        resume_checkpoint(tmp_path)
    assert "s0-00000020/meta.json: unreadable" in str(e.value)
    assert "s0-00000010/model.ckpt does not match" in str(e.value)


def test_checkpoint_without_checksums_loads_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    save_checkpoint(FakeTrainer(), tmp_path, _meta(10), keep_last=2)
    meta_file = tmp_path / "checkpoints" / "s0-00000010" / "meta.json"
    old = {
        k: v for k, v in json.loads(meta_file.read_text()).items() if k not in ("files", "tokens_per_step")
    }
    meta_file.write_text(json.dumps(old))
    path, meta = resume_checkpoint(tmp_path)
    assert path.name == "s0-00000010" and meta.files is None
    assert "records no checksums" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_refuses_a_damaged_model_ckpt_and_falls_back(corpus: str, tmp_path: Path) -> None:
    """A real run stopped at step 7, 4 KiB of random bytes written into its newest model.ckpt: the
    resume refuses it (naming the file), continues from step 6 and follows the undamaged run."""
    ref_dir = tmp_path / "ref"
    res = run_cli(["train", str(write_config(tiny_run(corpus, ref_dir), tmp_path / "ref.yaml"))])
    assert res.returncode == 0, res.stderr[-3000:]
    ref = {int(r["step"]): float(r["loss"]) for r in metric_rows(ref_dir)}
    run_dir = tmp_path / "run"
    cfg = write_config(tiny_run(corpus, run_dir, run={"stop_after_steps": 7}), tmp_path / "run.yaml")
    res = run_cli(["train", str(cfg)])
    assert res.returncode == 0, res.stderr[-3000:]
    path, meta = latest_checkpoint(run_dir)
    assert path.name == "s0-00000007" and meta.step == 7 and not meta.stage_done
    _damage(path / "model.ckpt")
    res = run_cli(["train", str(write_config(tiny_run(corpus, run_dir), tmp_path / "run2.yaml"))])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "refused checkpoint s0-00000007: " in res.stderr
    assert "s0-00000007/model.ckpt does not match its checksum" in res.stderr
    assert "resuming from s0-00000006 instead" in res.stderr
    rows = metric_rows(run_dir)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    for r in rows:
        assert float(r["loss"]) == ref[int(r["step"])], f"step {r['step']}"
    assert (run_dir / "checkpoints" / "s0-00000007.refused").is_dir()
    assert latest_checkpoint(run_dir)[1].stage_done


class _Poison(L.Callback):
    """Makes the loss of one step non-finite: by NaN weights (`weights`), or by NaN final hidden states
    (so NaN logits) in the first micro-batch of that step only (the weights stay finite)."""

    def __init__(self, step: int, weights: bool) -> None:
        self.step, self.weights, self.hook = step, weights, None
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step != self.step - 1 or batch_idx % module.plan.accumulate:
            return
        self.before = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        if self.weights:
            with torch.no_grad():
                for p in module.model.parameters():
                    p.view(-1)[0] = float("nan")
        else:
            # the final norm feeds the head in both loss forms (logits, or the fused chunked head)
            self.hook = module.model.ln_out.register_forward_hook(lambda m, i, out: out * math.nan)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
        if trainer.global_step == self.step and not self.after:
            self.after = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_nonfinite_loss_stops_before_any_save(corpus: str, tmp_path: Path) -> None:
    cfg = _run(corpus, tmp_path)
    with pytest.raises(NonFiniteLossError, match="stage 0 step 5: the loss is not finite"):
        train_from_config(cfg, extra_callbacks=[_Poison(5, weights=True)])
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "s0-00000003"]
    path, meta = resume_checkpoint(run_dir)
    assert path.name == "s0-00000003" and meta.step == 3
    assert all(math.isfinite(float(r["loss"])) for r in metric_rows(run_dir))


@pytest.mark.parametrize("segment_len", [None, 16], ids=["whole", "segmented"])
def test_nonfinite_loss_skips_the_step_and_counts_it(
    corpus: str, tmp_path: Path, segment_len: int | None
) -> None:
    stage = {"ctx_len": 32, "tokens": 32 * 8 * 12, "micro_bsz": 4, "tokens_per_step": 256}
    cfg = _run(
        corpus,
        tmp_path,
        arch="llama" if segment_len is None else "rwkv7",  # segments carry a recurrent state
        optim={"on_nonfinite": "skip"},
        checkpoint={"every_steps": 100},
        stages=[{**stage, "segment_len": segment_len}],
    )
    poison = _Poison(5, weights=False)
    summary = train_from_config(cfg, extra_callbacks=[poison])
    assert summary["stages_done"] == 1
    for k, v in poison.before.items():
        assert torch.equal(poison.after[k], v), f"{k} was updated by the skipped step"
    rows = {int(r["step"]): r for r in metric_rows(tmp_path / "run")}
    assert math.isnan(float(rows[5]["loss"])) and rows[5]["skipped"] == "1" and rows[4]["skipped"] == "0"
    assert all(math.isfinite(float(rows[s]["loss"])) and rows[s]["skipped"] == "1" for s in range(6, 13))
    assert float(rows[12]["loss"]) < float(rows[1]["loss"])
    cfg = _run(corpus, tmp_path, "strict", optim={"on_nonfinite": "skip", "max_skipped": 0})
    with pytest.raises(NonFiniteLossError, match="more than optim.max_skipped=0"):
        train_from_config(cfg, extra_callbacks=[_Poison(2, weights=False)])


def test_stop_after_steps_stops_and_saves_without_a_temp_dir(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.stop_after_steps ends the invocation with a checkpoint; saves write straight into the run
    directory, so a system temp directory that does not exist is never needed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-temp-dir"))
    cfg = _run(corpus, tmp_path, run={"stop_after_steps": 4})
    summary = train_from_config(cfg)
    assert summary["interrupted"] and summary["stages_done"] == 0
    path, meta = resume_checkpoint(tmp_path / "run")
    assert path.name == "s0-00000004" and meta.step == 4 and not meta.stage_done
    assert max(int(r["step"]) for r in metric_rows(tmp_path / "run")) == 4
    summary = train_from_config(cfg)
    assert latest_checkpoint(tmp_path / "run")[1].step == 8 and summary["interrupted"]


def test_a_recorded_global_batch_that_cannot_be_kept_is_refused(corpus: str, tmp_path: Path) -> None:
    from skein.train.loop.module import StagePlan
    from skein.train.loop.run import _recorded_tokens_per_step
    from skein.train.typed import ConfigError

    stage = _run(corpus, tmp_path).stages[0]  # micro_bsz 4, ctx_len 32
    assert StagePlan(stage, 1, recorded=512).accumulate == 4
    with pytest.raises(
        ConfigError, match="record 256 tokens per step, not a multiple of .* = 4 \\* 32 \\* 3"
    ):
        StagePlan(stage, 3, recorded=256)
    meta = CheckpointMeta(
        stage_index=0, step=5, tokens_stage=5, tokens_total=5, stage_done=False, tokens_per_step=[512]
    )
    with pytest.raises(ConfigError, match="stages.0.tokens_per_step=256, but .* records 512"):
        _recorded_tokens_per_step(_run(corpus, tmp_path), (tmp_path / "s0-00000005", meta))
