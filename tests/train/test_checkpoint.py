"""Checkpoints are published atomically: a save that dies midway leaves the previous checkpoint
the valid `latest`; a step's metrics are on disk before its checkpoint is; pruning keeps the
newest and every stage end; bad shards are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skein.train.checkpoints.checkpoint import CheckpointMeta, latest_checkpoint, save_checkpoint
from skein.train.config import load_config
from skein.train.loop.data_module import check_vocab
from tests.train.helpers import tiny_run, write_config


class _Strategy:
    def barrier(self, name: str) -> None:
        pass


class FakeTrainer:
    """What save_checkpoint needs of a Lightning trainer: one process, a file write that can fail."""

    is_global_zero = True
    strategy = _Strategy()

    def __init__(self) -> None:
        self.fail = False

    def save_checkpoint(self, path: Path) -> None:
        path.write_bytes(b"partial")
        if self.fail:
            raise OSError("disk full")
        path.write_bytes(b"weights and optimizer")


def _meta(step: int, stage_done: bool = False, stage_index: int = 0) -> CheckpointMeta:
    return CheckpointMeta(
        stage_index=stage_index, step=step, tokens_stage=step, tokens_total=step, stage_done=stage_done
    )


def test_crash_during_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    trainer = FakeTrainer()
    save_checkpoint(trainer, tmp_path, _meta(10), keep_last=2)
    trainer.fail = True
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(trainer, tmp_path, _meta(20), keep_last=2)
    path, meta = latest_checkpoint(tmp_path)
    assert path.name == "s0-00000010" and meta.step == 10
    assert (path / "model.ckpt").read_bytes() == b"weights and optimizer"
    assert not (tmp_path / "checkpoints" / "s0-00000020").exists()
    trainer.fail = False
    save_checkpoint(trainer, tmp_path, _meta(30), keep_last=2)
    assert latest_checkpoint(tmp_path)[0].name == "s0-00000030"
    assert not list((tmp_path / "checkpoints").glob("*.tmp")), "the crashed save's leftovers are cleared"


def test_prune_keeps_newest_and_stage_ends(tmp_path: Path) -> None:
    trainer = FakeTrainer()
    save_checkpoint(trainer, tmp_path, _meta(5, stage_done=True), keep_last=2)
    for step in (10, 20, 30, 40):
        save_checkpoint(trainer, tmp_path, _meta(step, stage_index=1), keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["s0-00000005", "s1-00000030", "s1-00000040"]


def test_damaged_run_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "s0-00000007").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("s0-00000007\n")
    with pytest.raises(ValueError, match="s0-00000007, which has no meta.json"):
        latest_checkpoint(tmp_path)


def test_shards_of_a_larger_vocabulary_are_refused(corpus: str, tmp_path: Path) -> None:
    model = {"arch": "llama", "vocab_size": 200, "n_layer": 1, "d_model": 32, "n_head": 2}
    cfg = load_config(write_config(tiny_run(corpus, tmp_path, model=model), tmp_path / "c.yaml"))
    with pytest.raises(ValueError, match="vocabulary of 257 .*larger than model.vocab_size=200"):
        check_vocab(cfg)
    meta = json.loads(Path(corpus + ".meta.json").read_text())
    assert meta["tokenizer"]["spec"] == "byte"
    cfg = load_config(
        write_config(tiny_run(corpus, tmp_path, data={"tokenizer": "rwkv_world"}), tmp_path / "d.yaml")
    )
    with pytest.raises(ValueError, match="made with tokenizer 'byte', but data.tokenizer is 'rwkv_world'"):
        check_vocab(cfg)


def test_a_step_is_logged_before_its_checkpoint_is_published(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill right after a save must not lose that step's metrics row: the resume starts after it."""
    import csv

    import skein.train.loop.callbacks as callbacks
    from skein.train.loop.run import train_from_config

    run_dir = tmp_path / "run"
    logged_at_save: list[tuple[int, set[int]]] = []

    def recording_save(trainer: object, out_dir: Path, meta: CheckpointMeta, keep_last: int) -> Path:
        with open(run_dir / "metrics.csv") as f:
            logged_at_save.append((meta.step, {int(r["step"]) for r in csv.DictReader(f)}))
        return save_checkpoint(trainer, out_dir, meta, keep_last)

    monkeypatch.setattr(callbacks, "save_checkpoint", recording_save)
    train_from_config(load_config(write_config(tiny_run(corpus, run_dir), tmp_path / "c.yaml")))
    assert [step for step, _ in logged_at_save] == [3, 6, 9, 12]
    for step, logged in logged_at_save:
        assert step in logged, f"checkpoint of step {step} published before its metrics row"
