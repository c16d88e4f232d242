"""Nothing lost: a run killed with SIGKILL and resumed follows the uninterrupted loss curve step
for step (identical on CPU); SIGTERM saves and stops; a resume on another world size continues
the same data; a finished stage hands its weights to the next."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from skein.train.checkpoints.checkpoint import CheckpointMeta, latest_checkpoint
from skein.train.config import load_config
from skein.train.loop.run import train_from_config
from tests.train.helpers import (
    kill_then_resume,
    losses,
    metric_rows,
    run_cli,
    start_cli,
    tiny_run,
    wait_for,
    write_config,
)


def _reference(corpus: str, tmp_path: Path, **sections) -> dict:
    ref_dir = tmp_path / "ref"
    cfg = write_config(tiny_run(corpus, ref_dir, **sections), tmp_path / "ref.yaml")
    res = run_cli(["train", str(cfg)])
    assert res.returncode == 0, res.stderr[-3000:]
    return losses(ref_dir)


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(corpus: str, tmp_path: Path) -> None:
    ref = _reference(corpus, tmp_path)
    run_dir = tmp_path / "killed"
    cfg = write_config(tiny_run(corpus, run_dir), tmp_path / "killed.yaml")

    def logged_past_checkpoint() -> bool:
        found = (run_dir / "checkpoints" / "latest").exists() and latest_checkpoint(run_dir)
        return bool(found) and max(int(r["step"]) for r in metric_rows(run_dir)) > found[1].step

    # Kill hard once a mid-stage checkpoint is published and training has logged steps past it,
    # which the resume computes again: metrics.csv must still hold each step once.
    kill_then_resume(
        cfg, tmp_path / "killed.log", logged_past_checkpoint, run_dir / "checkpoints" / "s0-00000012"
    )
    assert [int(r["step"]) for r in metric_rows(run_dir)] == list(range(1, 13))
    got = losses(run_dir)
    assert sorted(got) == sorted(ref)
    for key, value in ref.items():
        assert got[key] == value, f"step {key}: resumed loss {got[key]} != uninterrupted {value}"


@pytest.mark.slow
def test_sigterm_saves_and_stops_then_resumes(corpus: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "term"
    cfg = write_config(tiny_run(corpus, run_dir, checkpoint={"every_steps": 100}), tmp_path / "term.yaml")
    proc = start_cli(["train", str(cfg)], tmp_path / "term.log")
    wait_for(lambda: (run_dir / "metrics.csv").exists() and len(losses(run_dir)) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    meta = latest_checkpoint(run_dir)[1]
    assert 2 <= meta.step < 12 and not meta.stage_done
    res = run_cli(["train", str(cfg)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert max(step for _, step in losses(run_dir)) == 12


@pytest.mark.slow
def test_resume_on_another_world_size_continues_the_same_data(corpus: str, tmp_path: Path) -> None:
    """2 CPU processes (DDP on gloo) for 5 steps with tokens_per_step unset (so 4 x 32 x 2 = 256),
    then 1 process to the end: the recorded 256 tokens per step are kept (accumulation 2), so the
    loss curve follows a 1-process run of 256 tokens per step (up to the order of float sums)."""
    ref = _reference(corpus, tmp_path)
    run_dir = tmp_path / "ddp"
    stages = [{"ctx_len": 32, "tokens": 32 * 8 * 12, "micro_bsz": 4}]
    two = tiny_run(corpus, run_dir, stages=stages, trainer={"devices": 2, "strategy": "ddp"})
    two["run"]["stop_after_steps"] = 5
    res = run_cli(["train", str(write_config(two, tmp_path / "two.yaml"))], timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    path, meta = latest_checkpoint(run_dir)
    assert path.name == "s0-00000005" and not meta.stage_done and meta.tokens_per_step == [256]
    assert max(step for _, step in losses(run_dir)) == 5
    one = tiny_run(corpus, run_dir, stages=stages)
    res = run_cli(["train", str(write_config(one, tmp_path / "one.yaml"))])
    assert res.returncode == 0, res.stderr[-3000:]
    assert latest_checkpoint(run_dir)[1].tokens_per_step == [256]
    rows = metric_rows(run_dir)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert [int(r["tokens"]) for r in rows] == [256 * s for s in range(1, 13)]
    got = losses(run_dir)
    assert sorted(got) == sorted(ref)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=2e-4), f"step {key}"


@pytest.mark.slow
def test_stages_hand_over_and_resume_inside_a_stage(corpus: str, tmp_path: Path) -> None:
    stages = [
        {"ctx_len": 32, "tokens": 32 * 8 * 4, "micro_bsz": 4, "tokens_per_step": 256},
        {
            "ctx_len": 64,
            "tokens": 64 * 4 * 12,
            "micro_bsz": 2,
            "tokens_per_step": 256,
            "lr_init": 1e-3,
            "lr_final": 1e-4,
        },
    ]
    ref = _reference(corpus, tmp_path, stages=stages)
    assert {s for s, _ in ref} == {0, 1}
    assert max(step for s, step in ref if s == 1) == 12
    run_dir = tmp_path / "staged"
    cfg = write_config(tiny_run(corpus, run_dir, stages=stages), tmp_path / "staged.yaml")
    latest = run_dir / "checkpoints" / "latest"
    kill_then_resume(
        cfg,
        tmp_path / "staged.log",
        lambda: latest.exists() and latest.read_text().strip().startswith("s1-"),
        run_dir / "checkpoints" / "s1-00000012",
    )
    got = losses(run_dir)
    for key, value in ref.items():
        assert got[key] == value, f"step {key}"
    # the end of stage 0 is kept even beyond keep_last
    assert (run_dir / "checkpoints" / "s0-00000004").exists()


def test_metrics_time_is_the_run_training_time_across_stages_and_a_resume(
    corpus: str, tmp_path: Path
) -> None:
    """metrics.csv `time` goes on from the checkpoint's recorded training time after a resume and
    from the previous stage's last value in the next stage: strictly increasing over the run, and
    the resumed invocation adds no more than its own duration. A checkpoint without the recorded
    time (older skein) still resumes."""
    stages = [
        {"ctx_len": 32, "tokens": 32 * 8 * 4, "micro_bsz": 4, "tokens_per_step": 256},
        {"ctx_len": 64, "tokens": 64 * 4 * 8, "micro_bsz": 2, "tokens_per_step": 256},
    ]
    run_dir = tmp_path / "timed"
    cfg = tiny_run(corpus, run_dir, stages=stages, run={"stop_after_steps": 6})
    summary = train_from_config(load_config(write_config(cfg, tmp_path / "a.yaml")))
    path, meta = latest_checkpoint(run_dir)
    assert summary["interrupted"] and path.name == "s1-00000006" and not meta.stage_done
    first = metric_rows(run_dir)
    assert [(int(r["stage"]), int(r["step"])) for r in first] == [(0, s) for s in range(1, 5)] + [
        (1, s) for s in range(1, 7)
    ]
    t_first = [float(r["time"]) for r in first]
    assert all(b > a for a, b in zip(t_first, t_first[1:])), t_first
    assert meta.elapsed is not None and meta.elapsed >= t_first[-1]

    cfg["run"]["stop_after_steps"] = None
    t0 = time.perf_counter()
    summary = train_from_config(load_config(write_config(cfg, tmp_path / "b.yaml")))
    wall = time.perf_counter() - t0
    assert not summary["interrupted"] and summary["stages_done"] == 2
    rows = metric_rows(run_dir)
    assert [(int(r["stage"]), int(r["step"])) for r in rows][-3:] == [(1, 6), (1, 7), (1, 8)]
    times = [float(r["time"]) for r in rows]
    assert times[: len(t_first)] == t_first  # the rows before the stop are kept as written
    assert all(b > a for a, b in zip(times, times[1:])), times
    assert meta.elapsed < times[-2] <= meta.elapsed + wall  # step 7 starts from the recorded time
    final = latest_checkpoint(run_dir)[1]
    assert final.stage_done and times[-1] <= final.elapsed <= meta.elapsed + wall

    # a checkpoint from before skein recorded the training time: resumes, time counts from 0
    old_dir = tmp_path / "old"
    cfg_old = tiny_run(corpus, old_dir, stages=stages[:1], run={"stop_after_steps": 2})
    train_from_config(load_config(write_config(cfg_old, tmp_path / "c.yaml")))
    path, meta = latest_checkpoint(old_dir)
    assert path.name == "s0-00000002" and meta.elapsed is not None
    recorded = json.loads((path / "meta.json").read_text())
    del recorded["elapsed"]
    (path / "meta.json").write_text(json.dumps(recorded))
    assert CheckpointMeta.read(path).elapsed is None
    cfg_old["run"]["stop_after_steps"] = None
    summary = train_from_config(load_config(write_config(cfg_old, tmp_path / "d.yaml")))
    assert summary["stages_done"] == 1 and latest_checkpoint(old_dir)[1].step == 4
    assert [int(r["step"]) for r in metric_rows(old_dir)] == [1, 2, 3, 4]
