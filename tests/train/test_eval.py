"""Validation loss during training: fixed held-out samples every N steps, written to eval.csv,
equal to the loss of the saved weights on those samples."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from skein.data.dataset import PretrainDataset
from skein.data.prepare import prepare
from skein.rwkv import build_model
from skein.train.checkpoints.checkpoint import latest_checkpoint, load_weights
from skein.train.config import ConfigError, load_config
from skein.train.loop.losses import lm_loss
from skein.train.loop.run import train_from_config
from tests.train.helpers import tiny_run, write_config


@pytest.fixture(scope="module")
def split_corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("split") / "stdlib"
    prepare(output=str(out), tokenizer="byte", stdlib_max_bytes=300_000, val_fraction=0.25, progress=False)
    return str(out)


def test_validation_loss_every_n_steps(split_corpus: str, tmp_path: Path) -> None:
    val = split_corpus + "_val"
    ev = {"every_steps": 4, "val": [val], "val_samples": 10, "micro_bsz": 4}
    cfg = load_config(write_config(tiny_run(split_corpus, tmp_path / "run", eval=ev), tmp_path / "c.yaml"))
    train_from_config(cfg)
    with open(tmp_path / "run" / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), r["metric"]) for r in rows] == [
        (4, "val_loss"),
        (8, "val_loss"),
        (12, "val_loss"),
    ]
    values = [float(r["value"]) for r in rows]
    assert values[-1] < values[0]
    model = build_model(cfg.model)
    model.load_state_dict(load_weights(latest_checkpoint(tmp_path / "run")[0]))
    ds = PretrainDataset([val], None, cfg.stages[0].ctx_len, seed=cfg.run.seed)
    with torch.no_grad():
        losses = [lm_loss(model(x[None])[0], y[None]).item() for x, y in (ds[n] for n in range(10))]
    assert values[-1] == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_eval_needs_held_out_shards(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.val names no held-out shards"):
        load_config(write_config(tiny_run("c", tmp_path, eval={"every_steps": 10}), tmp_path / "c.yaml"))


def test_resume_drops_eval_rows_past_the_checkpoint(split_corpus: str, tmp_path: Path) -> None:
    """Rows a killed run wrote after its newest checkpoint are dropped by the resume, which writes
    them again: every (step, metric) once, the values those of the resumed run."""
    ev = {"every_steps": 2, "val": [split_corpus + "_val"], "val_samples": 6, "micro_bsz": 3}
    cfg = tiny_run(split_corpus, tmp_path / "run", eval=ev, run={"stop_after_steps": 4})
    summary = train_from_config(load_config(write_config(cfg, tmp_path / "c.yaml")))
    assert summary["interrupted"] and summary["steps"] == 4  # stopped at step 4 with its checkpoint
    path = tmp_path / "run" / "eval.csv"
    # what a run killed after step 6's evaluation but before its checkpoint leaves behind
    with open(path, "a", newline="") as f:
        csv.writer(f).writerows([[0, 6, 6 * 256, "val_loss", 123.0], [0, 8, 8 * 256, "val_loss", 456.0]])
    cfg["run"]["stop_after_steps"] = None
    train_from_config(load_config(write_config(cfg, tmp_path / "c.yaml")))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert all(float(r["value"]) < 10 for r in rows)
