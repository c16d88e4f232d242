"""`skein bench train` runs real optimizer steps on a tiny CPU config and reports consistent
figures, in a temporary run directory."""

from __future__ import annotations

import json
import random
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


def test_bench_profile_runs_extra_steps_outside_the_timed_window(corpus: str, tmp_path: Path) -> None:
    from skein.train.commands.bench import bench_train

    cfg = write_config(tiny_run(corpus, tmp_path / "run", arch="rwkv7"), tmp_path / "run.yaml")
    prof = tmp_path / "prof" / "profile.md"
    r = bench_train(str(cfg), steps=2, warmup=1, profile=str(prof), profile_steps=2)
    assert r["steps"] == 2 and r["profile"] == str(prof)
    text = prof.read_text()
    assert text.startswith("CPU self time per step over 2 steps")
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) >= 10
    ops = {row[1].strip(" `") for row in rows}
    assert ops & {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}, ops
    times = [float(row[2]) for row in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert not list(prof.parent.glob(".*tmp"))


def test_kernel_report_sums_device_time_by_category() -> None:
    from types import SimpleNamespace

    from skein.train.commands.profile import category, kernel_report

    rng = random.Random(3)
    names = {
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1": "matmul",
        "nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNT": "matmul",
        "_rwkv7_bwd_kernel": "recurrence kernels",
        "triton_red_fused__to_copy_add_mul_native_layer_norm_0": "Inductor fused",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
        "ncclDevKernel_AllReduce_Sum_f32_RING_LL": "communication",
        "Memcpy DtoD (Device -> Device)": "copies",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": "other",
    }
    events, want = [], {}
    for name, cat in names.items():
        for _ in range(rng.randint(1, 6)):
            us = rng.uniform(5.0, 4000.0)
            events.append(SimpleNamespace(name=name, time_range=SimpleNamespace(elapsed_us=lambda us=us: us)))
            want[cat] = want.get(cat, 0.0) + us
        assert category(name) == cat, name
    text = kernel_report(events, steps=3)
    total = sum(want.values())
    assert text.startswith(
        f"device time per step: {total / 3 / 1e3:.1f} ms over 3 steps ({len(events)} kernels)"
    )
    rows = [r.split("|") for r in text.splitlines() if r.count("|") == 4]
    cats = {r[1].strip(): float(r[2]) for r in rows if r[1].strip() not in ("category", "---")}
    for cat, us in want.items():
        assert cats[cat] == pytest.approx(us / 3 / 1e3, abs=0.051), cat


def test_device_kernels_leave_out_annotation_ranges_and_host_events() -> None:
    """An `Optimizer.step#...` range on the device timeline spans kernels that are also listed one
    by one: the report counts the kernels once and never the range."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from skein.train.commands.profile import device_kernels, kernel_report

    rng = random.Random(11)

    def event(name: str, us: float, device: DeviceType, annotation: bool = False) -> SimpleNamespace:
        span = SimpleNamespace(elapsed_us=lambda: us)
        return SimpleNamespace(name=name, time_range=span, device_type=device, is_user_annotation=annotation)

    kernels = [
        event(name, rng.uniform(50.0, 900.0), DeviceType.CUDA)
        for name in ("_rwkv7_bwd_kernel", "nvjet_tst_256x128_NNT", "triton_poi_fused_add_0") * 4
    ]
    span = sum(e.time_range.elapsed_us() for e in kernels) * 1.3
    events = [
        *kernels,
        event("Optimizer.step#AdamW.step", span, DeviceType.CUDA, annotation=True),
        event("aten::mm", rng.uniform(10.0, 90.0), DeviceType.CPU),
        event("Optimizer.step#AdamW.step", span, DeviceType.CPU, annotation=True),
    ]
    rng.shuffle(events)
    kept = device_kernels(events)
    assert sorted(id(e) for e in kept) == sorted(id(e) for e in kernels)
    total = sum(e.time_range.elapsed_us() for e in kernels)
    assert kernel_report(kept, steps=2).startswith(f"device time per step: {total / 2 / 1e3:.1f} ms")
    assert "timed step" not in kernel_report(kept, steps=2)
    step_ms = total / 2 / 1e3 / rng.uniform(0.3, 0.9)  # the kernels fill 30-90% of the step
    second = kernel_report(kept, steps=2, step_ms=step_ms).splitlines()[1]
    assert second.startswith(f"timed step (not profiled): {step_ms:.1f} ms, of which the kernels fill ")
    assert f"fill {100 * total / 2 / 1e3 / step_ms:.0f}%" in second


def test_profile_gets_the_timed_step_wall_time(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile's callback reads the timed window's wall time per step (for the share the
    kernels fill on a GPU) when the profiled steps end, and it agrees with the bench's step time."""
    import skein.train.commands.bench as bench

    seen: list[float | None] = []

    class Recording(bench.ProfileSteps):
        def on_train_end(self, trainer, module) -> None:
            seen.append(self.step_ms())
            super().on_train_end(trainer, module)

    monkeypatch.setattr(bench, "ProfileSteps", Recording)
    cfg = write_config(tiny_run(corpus, tmp_path / "run", arch="rwkv7"), tmp_path / "run.yaml")
    r = bench.bench_train(str(cfg), steps=3, warmup=1, profile=str(tmp_path / "p.md"), profile_steps=1)
    assert len(seen) == 1 and seen[0] is not None
    assert seen[0] == pytest.approx(1e3 * r["tokens_per_step"] / r["tokens_per_s"], rel=1e-6)
    assert seen[0] == pytest.approx(1e3 * r["step_s_mean"], rel=0.25)
