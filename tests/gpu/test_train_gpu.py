"""Training on GPUs: DeepSpeed ZeRO-2, bf16, gradient checkpointing; the loss falls, a resumed
run continues the curve, and a segmented stage follows the whole-sequence curve. Skipped without CUDA (multigpu: without two devices)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from skein.rwkv import build_model
from skein.train.checkpoints.checkpoint import latest_checkpoint, load_weights
from tests.train.helpers import losses, run_cli, tiny_run, write_config


def _gpu_run(corpus: str, out: Path, devices: int, steps: int, **extra) -> dict:
    model = {"arch": "rwkv7", "vocab_size": 257, "n_layer": 4, "d_model": 256, "head_size": 64}
    stage = {
        "ctx_len": 256,
        "tokens": 256 * 16 * steps,
        "micro_bsz": 16 // devices,
        "tokens_per_step": 256 * 16,
    }
    return tiny_run(
        corpus,
        out,
        model=model,
        stages=[stage],
        trainer={
            "accelerator": "gpu",
            "devices": devices,
            "strategy": "deepspeed",
            "zero_stage": 2,
            "precision": "bf16-mixed",
            "grad_checkpointing": True,
        },
        checkpoint={"every_steps": 10, "keep_last": 2},
        **extra,
    )


@pytest.mark.gpu
@pytest.mark.slow
def test_zero2_bf16_checkpointed_run_learns_and_resumes(corpus: str, tmp_path: Path) -> None:
    cfg = _gpu_run(corpus, tmp_path / "run", devices=1, steps=40)
    cfg["run"]["stop_after_steps"] = 20
    path = write_config(cfg, tmp_path / "run.yaml")
    res = run_cli(["train", str(path)], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt, meta = latest_checkpoint(tmp_path / "run")  # the first invocation stopped at step 20
    assert ckpt.name == "s0-00000020" and meta.step == 20 and not meta.stage_done
    assert meta.files and all(rel.startswith("model.ckpt/") for rel in meta.files)  # ZeRO files
    assert max(step for _, step in losses(tmp_path / "run")) == 20
    res = run_cli(["train", str(path)], timeout=900)  # the second resumes to 40
    assert res.returncode == 0, res.stderr[-3000:]
    curve = losses(tmp_path / "run")
    assert max(step for _, step in curve) == 40
    assert curve[(0, 40)] < curve[(0, 1)] - 1.0
    # the ZeRO checkpoint consolidates on the CPU into the model's own keys
    sd = load_weights(latest_checkpoint(tmp_path / "run")[0])
    assert set(sd) == set(build_model(cfg["model"]).state_dict())


@pytest.mark.gpu
@pytest.mark.slow
def test_zero2_segmented_stage_learns_and_follows_the_whole_sequence_curve(
    corpus: str, tmp_path: Path
) -> None:
    """ctx 1024 in four 256-token segments (exact gradient, block checkpointing nested) under
    DeepSpeed ZeRO-2 bf16 with gradient accumulation: one backward per micro-batch, and the curve
    follows the same run on whole sequences (equal gradients up to bf16 rounding)."""
    curves = {}
    for name, segment_len in (("whole", None), ("segments", 256)):
        cfg = _gpu_run(corpus, tmp_path / name, devices=1, steps=12)
        cfg["stages"] = [
            {"ctx_len": 1024, "tokens": 1024 * 8 * 12, "micro_bsz": 4, "tokens_per_step": 1024 * 8}
        ]
        cfg["stages"][0]["segment_len"] = segment_len
        res = run_cli(["train", str(write_config(cfg, tmp_path / f"{name}.yaml"))], timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        curves[name] = losses(tmp_path / name)
    assert max(step for _, step in curves["segments"]) == 12
    assert curves["segments"][(0, 12)] < curves["segments"][(0, 1)] - 0.5
    for key, value in curves["whole"].items():
        assert curves["segments"][key] == pytest.approx(value, rel=3e-2), f"step {key}"


@pytest.mark.gpu
@pytest.mark.slow
def test_zero2_second_stage_in_the_same_process_trains(corpus: str, tmp_path: Path) -> None:
    """A context-extension run under ZeRO-2: stage 0 at ctx 256, stage 1 at ctx 1024 in 256-token
    segments, in one invocation (each stage builds its own DeepSpeed engine on the same model)."""
    cfg = _gpu_run(corpus, tmp_path / "run", devices=1, steps=6)
    cfg["stages"].append(
        {
            "ctx_len": 1024,
            "tokens": 1024 * 4 * 6,
            "micro_bsz": 4,
            "tokens_per_step": 1024 * 4,
            "segment_len": 256,
        }
    )
    res = run_cli(["train", str(write_config(cfg, tmp_path / "run.yaml"))], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    _, meta = latest_checkpoint(tmp_path / "run")
    assert meta.stage_index == 1 and meta.stage_done and meta.step == 6
    curve = losses(tmp_path / "run")
    assert max(step for stage, step in curve if stage == 1) == 6
    assert curve[(1, 6)] < curve[(0, 1)] - 0.5


@pytest.mark.multigpu
@pytest.mark.slow
def test_two_gpu_zero2_matches_one_gpu_curve(corpus: str, tmp_path: Path) -> None:
    curves = {}
    for n in (1, 2):
        path = write_config(
            _gpu_run(corpus, tmp_path / f"g{n}", devices=n, steps=20), tmp_path / f"g{n}.yaml"
        )
        res = run_cli(["train", str(path)], timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        curves[n] = losses(tmp_path / f"g{n}")
    for key, value in curves[1].items():
        assert curves[2][key] == pytest.approx(value, rel=2e-2), f"step {key}"
    with open(tmp_path / "g2" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    print(
        f"2 GPUs: {float(rows[-1]['tokens_per_s']):,.0f} tokens/s, {float(rows[-1]['gpu_mem_gb']):.2f} GiB peak"
    )
