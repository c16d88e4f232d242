"""loss.png and lr.png: every logged step with a smoothed line, resumed steps counted once, stage
boundaries and the validation loss."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from skein.train.commands.inspect import lr_curve, stage_boundaries
from skein.train.commands.plots import loss_points, plot_loss_curve, smooth
from skein.train.config import load_config
from tests.train.helpers import tiny_run, write_config


def _metrics(path: Path, rows: list[tuple[int, int, int, float]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage", "step", "tokens", "loss", "lr"])
        for stage, step, tokens, loss in rows:
            w.writerow([stage, step, tokens, loss, 1e-3])


def test_loss_curve_keeps_every_step_once_and_marks_stages(tmp_path: Path) -> None:
    rng = random.Random(7)
    stage0 = [(0, s, 256 * s, 5.0 / s**0.3 + rng.gauss(0, 0.05)) for s in range(1, 41)]
    resumed = [(0, s, 256 * s, 9.9) for s in range(30, 36)]  # logged before a kill
    redone = [(0, s, 256 * s, 5.0 / s**0.3) for s in range(30, 36)]  # logged again after resume
    stage1 = [(1, s, 40 * 256 + 512 * s, 3.0 - s / 100 + rng.gauss(0, 0.05)) for s in range(1, 21)]
    _metrics(tmp_path / "metrics.csv", stage0[:35] + resumed + redone + stage0[35:] + stage1)
    tokens, loss, starts = loss_points(tmp_path / "metrics.csv")
    assert len(tokens) == 60 and tokens == sorted(tokens)
    assert 9.9 not in loss
    assert starts == [40 * 256 + 512]
    with open(tmp_path / "eval.csv", "w") as f:
        f.write("stage,step,tokens,metric,value\n0,20,5120,val_loss,3.1\n0,40,10240,val_loss,2.9\n")
    drawn = plot_loss_curve(tmp_path / "metrics.csv", tmp_path / "loss.png")
    assert drawn == {"steps": 60, "validation": 2, "stage_boundaries": 1}
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp"))


def test_smoothing_follows_the_mean_and_cuts_the_noise() -> None:
    rng = random.Random(1)
    noisy = [2.0 + rng.gauss(0, 0.3) for _ in range(2000)]
    sm = smooth(noisy, 0.95)
    assert sm[0] == pytest.approx(noisy[0])  # no pull towards zero at the start
    tail = sm[500:]
    assert abs(sum(tail) / len(tail) - 2.0) < 0.05
    spread = max(tail) - min(tail)
    assert spread < (max(noisy) - min(noisy)) / 4


def test_lr_plot_marks_stage_boundaries(tmp_path: Path) -> None:
    stages = [
        {"ctx_len": 32, "tokens": 10_000, "micro_bsz": 4},
        {"ctx_len": 64, "tokens": 20_000, "micro_bsz": 2, "lr_init": 1e-4, "lr_final": 1e-5},
        {"ctx_len": 128, "tokens": 5_000, "micro_bsz": 1, "lr_init": 5e-5, "lr_final": 1e-5},
    ]
    path = write_config(tiny_run("unused", tmp_path / "run", stages=stages), tmp_path / "c.yaml")
    cfg = load_config(path)
    assert stage_boundaries(cfg) == [10_112, 10_112 + 20_096]
    curve = lr_curve(str(path))
    at = dict(curve)
    assert at[0] < 3e-3 and max(lr for t, lr in curve if t >= 10_112 + 20_096) <= 5e-5
