"""The learning-rate schedule by tokens, the plateau detector, and the lr plot from a config."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import torch

from skein.train.commands.inspect import lr_curve, plot_lr
from skein.train.config import load_config
from skein.train.loop.module import LMModule
from skein.train.loop.schedule import AutoDecay, ScheduleSection
from skein.train.parallel.execution import resolve_execution
from skein.train.plan import StagePlan
from tests.train.helpers import tiny_run, write_config

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "rwkv_lm_demo.yaml"


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


def rwkv_lm_lr(
    global_step: int, lr_init: float, lr_final: float, warmup_steps: int, exit_tokens: int, tps: int
) -> float:
    """RWKV-LM's learning rate at the start of the step after `global_step` completed optimizer
    steps (RWKV-v7/train_temp/src/trainer.py, on_train_batch_start, --my_exit_tokens > 0 and
    --epoch_begin 0), written from its published formulas: a cosine by tokens whose progress starts
    after warmup, times the warmup factor 0.01 + 0.99 * step / warmup_steps for step < warmup_steps."""
    real_tokens, warmup_tokens = global_step * tps, warmup_steps * tps
    progress = max(0.0, min(1.0, (real_tokens - warmup_tokens) / (exit_tokens - warmup_tokens)))
    cos = math.cos(math.pi * progress)
    lr = lr_final + (lr_init - lr_final) * (1 + cos) / 2
    if global_step < warmup_steps:
        lr *= 0.01 + 0.99 * global_step / warmup_steps
    return lr


def rwkv_lm_steps(exit_tokens: int, tps: int) -> int:
    """Optimizer steps RWKV-LM takes: it saves and exits at the start of the first step whose
    progress reaches 1, i.e. once global_step * tps >= exit_tokens."""
    return next(s for s in itertools.count() if s * tps >= exit_tokens)


@pytest.mark.parametrize("exit_tokens", [400 * 8192, 400 * 8192 - 5_000, 1_498_226_207])
def test_rwkv_lm_cosine_follows_rwkv_lm_step_by_step(exit_tokens: int) -> None:
    """The recipe configs/recipes/rwkv_lm_demo.yaml with stages.0.tokens = RWKV-LM's
    --my_exit_tokens: the same number of steps, and at each of the first 400 steps and the last 50
    the module's lr equals RWKV-LM's (lr_init 6e-4, lr_final 6e-5, warmup_steps 10, 8192 tokens a step)."""
    cfg = load_config(RECIPE, [f"stages.0.tokens={exit_tokens}", "trainer.accelerator=cpu"])
    assert cfg.schedule.kind == "rwkv_lm_cosine" and cfg.schedule.warmup_tokens == 10 * 8192
    module = LMModule(
        cfg,
        0,
        model=torch.nn.Linear(2, 2),
        plan=StagePlan(cfg.stages[0], world_size=1),
        execution=resolve_execution(cfg.trainer),
    )
    tps = module.plan.tokens_per_step
    assert tps == 8192 and module.plan.steps == rwkv_lm_steps(exit_tokens, tps)
    steps = module.plan.steps
    checked = [*range(min(400, steps)), *range(max(steps - 50, 0), steps)]
    for s in checked:
        want = rwkv_lm_lr(s, 6e-4, 6e-5, 10, exit_tokens, tps)
        assert module.lr(s * tps) == pytest.approx(want, rel=1e-12, abs=0), f"step {s + 1}"
    assert module.lr(0) == pytest.approx(6e-6, rel=1e-12)  # the first step at 0.01 lr_init
    if steps < 1000:  # skein's plain cosine measures progress from token 0: not RWKV-LM's curve
        plain = ScheduleSection(kind="cosine", warmup_tokens=10 * 8192)
        theirs = rwkv_lm_lr(200, 6e-4, 6e-5, 10, exit_tokens, tps)
        assert plain.lr(200 * tps, 6e-4, 6e-5, module.plan.total_tokens) < theirs * (1 - 1e-3)


def test_rwkv_lm_cosine_random_budgets() -> None:
    """Random lr pairs, warmups and budgets: ScheduleSection against the published formula."""
    rng = random.Random(7)
    for _ in range(200):
        tps = rng.choice([512, 4096, 8192, 24_576])
        warmup = rng.randrange(0, 50)
        exit_tokens = rng.randrange((warmup + 2) * tps, 3_000 * tps)
        lr_init = rng.uniform(1e-4, 1e-2)
        lr_final = lr_init * rng.uniform(0.01, 1.0)
        sched = ScheduleSection(kind="rwkv_lm_cosine", warmup_tokens=warmup * tps)
        total = -(-exit_tokens // tps) * tps
        for s in rng.sample(range(total // tps + 5), 20):
            want = rwkv_lm_lr(s, lr_init, lr_final, warmup, exit_tokens, tps)
            got = sched.lr(s * tps, lr_init, lr_final, total, budget_tokens=exit_tokens)
            assert got == pytest.approx(want, rel=1e-12, abs=0), (s, warmup, exit_tokens)
