"""The learning-rate schedule by tokens, the plateau detector, and the lr plot from a config."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from skein.train.commands.inspect import lr_curve, plot_lr
from skein.train.loop.schedule import AutoDecay, ScheduleSection
from tests.train.helpers import tiny_run, write_config


def test_constant_then_exponential() -> None:
    sched = ScheduleSection(kind="constant_exp", warmup_tokens=100, decay_fraction=0.4)

    def lr(t: int) -> float:
        return sched.lr(t, 6e-4, 6e-5, 1000)

    assert lr(0) == pytest.approx(6e-4 * 0.01)
    assert lr(50) == pytest.approx(6e-4 * (0.01 + 0.99 * 0.5))
    assert lr(100) == lr(600) == pytest.approx(6e-4)
    assert lr(800) == pytest.approx(6e-4 * 0.1**0.5)  # geometric midpoint of the decay
    assert lr(1000) == pytest.approx(6e-5)
    assert lr(5000) == pytest.approx(6e-5)
    lrs = [lr(t) for t in range(600, 1001, 10)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) - min(ratios) < 1e-9  # exponential: a constant ratio per token


def test_cosine() -> None:
    sched = ScheduleSection(kind="cosine")

    def lr(t: int) -> float:
        return sched.lr(t, 1e-3, 1e-4, 2000)

    assert lr(0) == pytest.approx(1e-3)
    assert lr(1000) == pytest.approx(5.5e-4)
    assert lr(2000) == pytest.approx(1e-4)
    assert lr(500) == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_auto_decay_starts_on_plateau() -> None:
    """A loss that falls quickly and then flattens: decay starts after the flattening, not before."""
    rng = random.Random(0)
    det = AutoDecay(window_tokens=1000, threshold=3e-3, smoothing=0.9)
    start = None
    for step in range(1, 400):
        tokens = step * 100
        loss = 2.0 + 3.0 * math.exp(-tokens / 5000) + rng.gauss(0, 1e-3)
        if det.update(tokens, loss):
            start = tokens
            break
    assert start is not None
    # improvement per 1000 tokens is 3/5 exp(-t/5000) < 3e-3 from t = 5000 ln(200) = 26.5k on
    assert 20_000 < start < 35_000
    sched = ScheduleSection(kind="auto_exp")
    assert sched.lr(start, 1e-3, 1e-4, 40_000, decay_start=start) == pytest.approx(1e-3)
    assert sched.lr(40_000, 1e-3, 1e-4, 40_000, decay_start=start) == pytest.approx(1e-4)
    assert sched.lr(39_000, 1e-3, 1e-4, 40_000) == pytest.approx(1e-3)


def test_auto_decay_state_round_trip() -> None:
    a = AutoDecay(window_tokens=10, threshold=1e-3)
    for t in range(1, 30):
        a.update(t * 3, 5.0 / t)
    b = AutoDecay(window_tokens=10, threshold=1e-3)
    b.load_state_dict(a.state_dict())
    for t in range(30, 60):
        assert a.update(t * 3, 5.0 / t) == b.update(t * 3, 5.0 / t)


def test_plot_lr_from_config(tmp_path: Path) -> None:
    stages = [
        {"ctx_len": 32, "tokens": 10_000, "micro_bsz": 4},
        {"ctx_len": 64, "tokens": 20_000, "micro_bsz": 2, "lr_init": 1e-4, "lr_final": 1e-5},
    ]
    cfg = write_config(tiny_run("unused", tmp_path / "run", stages=stages), tmp_path / "c.yaml")
    curve = lr_curve(str(cfg))
    tokens = [t for t, _ in curve]
    assert tokens == sorted(tokens) and tokens[-1] == 10_112 + 20_096
    assert max(lr for t, lr in curve if t > 10_112) <= 1e-4 + 1e-12
    out = plot_lr(str(cfg), str(tmp_path / "lr.png"))
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
