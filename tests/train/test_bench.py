"""`skein bench train` runs real optimizer steps on a tiny CPU config and reports consistent
figures, in a temporary run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skein.train.commands.bench import PHASES
from skein.train.config import ConfigError
from tests.train.helpers import run_cli, tiny_run, write_config


@pytest.mark.slow
def test_bench_train_cli_reports_real_steps(corpus: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    cfg = write_config(tiny_run(corpus, out_dir, arch="rwkv7"), tmp_path / "run.yaml")
    js = tmp_path / "bench.json"
    res = run_cli(
        [
            "bench",
            "train",
            str(cfg),
            "trainer.loss_chunk_tokens=48",
            "--optim.lr_init",
            "1e-3",
            "--steps",
            "4",
            "--warmup",
            "2",
            "--json",
            str(js),
        ]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tokens/s per GPU" in res.stdout and "step breakdown" in res.stdout
    r = json.loads(js.read_text())
    assert r["steps"] == 4 and r["warmup"] == 2 and r["arch"] == "rwkv7"
    assert r["param_change"] > 0  # the optimizer moved the weights
    for key in (
        "tokens_per_s_per_gpu",
        "tokens_per_s",
        "step_s_median",
        "step_s_mean",
        "flops_per_token",
        "model_tflops_per_gpu",
        "matmul_peak_tflops",
        "mfu_measured",
        "peak_memory_gb",
        "loss",
    ):
        assert r[key] > 0, key
    assert r["tokens_per_step"] == 32 * 8
    assert r["mfu_datasheet"] is None  # no datasheet peak for a CPU
    b = r["breakdown_s"]
    assert set(b) == set(PHASES)
    assert all(b[k] >= 0 for k in PHASES if k != "other"), b
    assert b["forward"] > 0 and b["backward"] > 0 and b["optimizer"] > 0
    assert sum(b.values()) == pytest.approx(r["step_s_mean"], rel=1e-6)
    assert b["other"] > -1e-3 * r["step_s_mean"], b
    # tokens/s comes from the host wall clock, the breakdown from the per-step marks: they agree
    assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_s_mean"], rel=0.25)
    assert not out_dir.exists()  # the config's run directory is never used


def test_bench_refuses_a_segmented_stage(corpus: str, tmp_path: Path) -> None:
    from skein.train.commands.bench import bench_train

    cfg = tiny_run(
        corpus, tmp_path / "run", stages=[{"ctx_len": 32, "tokens": 1024, "micro_bsz": 4, "segment_len": 16}]
    )
    with pytest.raises(ConfigError, match="segment_len"):
        bench_train(str(write_config(cfg, tmp_path / "run.yaml")), steps=1, warmup=0)
