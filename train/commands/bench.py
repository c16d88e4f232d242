"""`skein bench train`: training throughput of a run config, measured on real optimizer steps.

The model, data module, strategy and Lightning trainer are built as `skein train` builds them
(loop/trainer.py), for one stage of the config, in a temporary run directory that is removed
afterwards (the config's run.out_dir is never touched). After `warmup` steps, `steps` measured steps
give tokens/s, MFU, peak memory and a breakdown of the step time:

    data      the gap before each micro-batch's training_step (loader fetch, Lightning's loop)
    forward   training_step: model forward and loss
    backward  the backward pass
    optimizer gradient-norm hooks, clipping and the optimizer step
    other     what is left of the step (hooks, zero_grad, host gaps between the phases)

On a GPU the phase boundaries are CUDA events recorded on the current stream (no synchronisation
inside a step; one at each end of the measured window), so the figures are the GPU timeline; on
the CPU they are host clock readings. MFU divides the model FLOPs (`flops_per_token`) by a matmul
peak measured in the same run (a large bf16 GEMM timed with CUDA events; fp32 on the CPU) and by the
datasheet peak of train/callbacks.PEAK_TFLOPS.
"""

from __future__ import annotations

import json as jsonlib
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch

from skein.train.checkpoints.checkpoint import write_text_atomic
from skein.train.checkpoints.lock import is_global_zero
from skein.train.commands.profile import ProfileSteps
from skein.train.config import ConfigError, RunConfig, load_config
from skein.train.loop.callbacks import PEAK_TFLOPS, step_done
from skein.train.loop.data_module import StageDataModule, check_vocab
from skein.train.loop.module import LMModule
from skein.train.loop.trainer import build_stage_trainer, build_training_model
from skein.train.parallel.execution import resolve_execution
from skein.train.plan import stage_plans

PHASES = ("data", "forward", "backward", "optimizer", "other")


class _Clock:
    """Timestamps: CUDA events on the current stream on a GPU, the host clock otherwise."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def seconds(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a


class StepTimer(L.Callback):
    """Records the phase boundaries of every optimizer step (all micro-batches) after `warmup`, up
    to `warmup + steps` (all the steps that follow when `steps` is None)."""

    def __init__(self, warmup: int, cuda: bool, steps: int | None = None) -> None:
        self.warmup, self.clock = warmup, _Clock(cuda)
        self.stop = None if steps is None else warmup + steps
        self.steps: list[dict[str, Any]] = []
        self._cur: dict[str, Any] | None = None
        self._last_end: Any = None
        self.window: list[float] = []

    def window_step_ms(self) -> float | None:
        """Wall time per measured step over the closed window (None before it closes)."""
        if len(self.window) < 2 or not self.steps:
            return None
        return 1e3 * (self.window[-1] - self.window[0]) / len(self.steps)

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        if self.warmup == 0:
            if self.clock.cuda:
                torch.cuda.synchronize()
            self.window.append(time.perf_counter())
            self._last_end = self.clock.mark()

    def _measuring(self, trainer: L.Trainer) -> bool:
        return trainer.global_step >= self.warmup and (self.stop is None or trainer.global_step < self.stop)

    def _close(self) -> None:
        if self.clock.cuda:
            torch.cuda.synchronize()
        self.window.append(time.perf_counter())

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if not self._measuring(trainer):
            return
        if self._cur is None:
            self._cur = {"prev": self._last_end, "micro": []}
        self._cur["micro"].append([self.clock.mark(), None, None])

    def on_before_backward(self, trainer: L.Trainer, module: Any, loss: torch.Tensor) -> None:
        if self._cur is not None:
            self._cur["micro"][-1][1] = self.clock.mark()

    def on_after_backward(self, trainer: L.Trainer, module: Any) -> None:
        if self._cur is not None:
            self._cur["micro"][-1][2] = self.clock.mark()

    def on_before_optimizer_step(self, trainer: L.Trainer, module: Any, optimizer: Any) -> None:
        if self._cur is not None:
            self._cur["opt"] = self.clock.mark()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not step_done(module, batch_idx):
            return
        end = self.clock.mark()
        if self._cur is not None:
            self._cur["end"] = end
            self.steps.append(self._cur)
            self._cur = None
            if trainer.global_step == self.stop:  # the last measured step: the window closes here
                self._close()
        elif trainer.global_step == self.warmup:  # the last warmup step: the window opens here
            self._close()
        self._last_end = end

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if len(self.window) < 2:
            self._close()

    def breakdown(self) -> list[dict[str, float]]:
        """Seconds per phase and in all, one dict per measured step."""
        s = self.clock.seconds
        out = []
        for st in self.steps:
            micro = st["micro"]
            prev = st["prev"]
            data = fwd = bwd = 0.0
            for start, fwd_end, bwd_end in micro:
                data += s(prev, start)
                fwd += s(start, fwd_end)
                bwd += s(fwd_end, bwd_end)
                prev = bwd_end
            opt = s(st["opt"], st["end"])
            total = s(st["prev"], st["end"])
            out.append(
                {
                    "data": data,
                    "forward": fwd,
                    "backward": bwd,
                    "optimizer": opt,
                    "other": total - (data + fwd + bwd + opt),
                    "step": total,
                }
            )
        return out


def matmul_peak_tflops(cuda: bool, n: int = 8192, reps: int = 20) -> float:
    """Measured dense-matmul throughput of this device: an n x n x n bf16 GEMM timed with CUDA
    events on a GPU; an fp32 GEMM of side min(n, 1024) on the host clock on the CPU."""
    if not cuda:
        n = min(n, 1024)
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        return 2 * n**3 * 3 / (time.perf_counter() - t0) / 1e12
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def _param_sample(model: torch.nn.Module) -> list[torch.Tensor]:
    """A few thousand elements of every parameter, to tell whether the optimizer moved them."""
    return [p.detach().flatten()[:4096].float().cpu().clone() for p in model.parameters()]


def bench_config(
    cfg: RunConfig,
    steps: int = 20,
    warmup: int = 5,
    stage: int = 0,
    profile: str | None = None,
    profile_steps: int = 2,
) -> dict[str, Any]:
    """Run `warmup` + `steps` optimizer steps of stage `stage` of `cfg` and return the figures
    (see the module docstring); the run directory is a temporary one. With `profile`, then
    `profile_steps` more steps under torch.profiler, reported to that file (commands/profile.py)."""
    if steps <= 0 or warmup < 0 or profile_steps <= 0:
        raise ConfigError(
            f"bench train: --steps and --profile_steps must be positive and --warmup >= 0, got {steps}, "
            f"{profile_steps}, {warmup}"
        )
    if not 0 <= stage < len(cfg.stages):
        raise ConfigError(f"bench train: --stage {stage} is not a stage of the config ({len(cfg.stages)})")
    check_vocab(cfg)
    execution = resolve_execution(cfg.trainer)
    cuda = execution.gpu
    world = execution.world_size
    plan = stage_plans(cfg)[stage]
    with tempfile.TemporaryDirectory(prefix="skein-bench-") as tmp:
        cfg = replace(cfg, run=replace(cfg.run, out_dir=tmp))
        model = build_training_model(cfg, execution=execution)
        module = LMModule(cfg, stage, model, plan, execution)
        timer = StepTimer(warmup, cuda, steps)
        callbacks: list[L.Callback] = [timer]
        extra = 0
        if profile is not None:
            callbacks.append(ProfileSteps(warmup + steps, profile, cuda, step_ms=timer.window_step_ms))
            extra = profile_steps
        trainer = build_stage_trainer(cfg, plan, execution, tmp, callbacks, max_steps=warmup + steps + extra)
        data = StageDataModule(cfg, plan.ctx_len, cfg.stages[stage].micro_bsz, plan.global_batch, 0)
        before = _param_sample(model)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(module, datamodule=data)
        after = _param_sample(model)
    if trainer.global_step != warmup + steps + extra or len(timer.steps) != steps:
        raise RuntimeError(
            f"bench train: ran {trainer.global_step} steps ({len(timer.steps)} measured), "
            f"expected {warmup + steps + extra}: the data ran out?"
        )
    rows = timer.breakdown()
    tok_s_gpu = plan.tokens_per_step / (timer.window_step_ms() / 1e3) / world
    fpt = model.flops_per_token(plan.ctx_len)
    peak = matmul_peak_tflops(cuda)
    sheet = cfg.log.peak_tflops
    if sheet is None and cuda:
        name = torch.cuda.get_device_name()
        sheet = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    model_tflops = fpt * tok_s_gpu / 1e12
    if cuda:
        mem_gb = torch.cuda.max_memory_allocated() / 2**30
    else:
        mem_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in (*PHASES, "step")}
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "world_size": world,
        "arch": model.config.arch,
        "ctx_len": plan.ctx_len,
        "tokens_per_step": plan.tokens_per_step,
        "steps": steps,
        "warmup": warmup,
        "compile": any(getattr(b, "_skein_compile", None) for b in model.blocks),
        "compile_mode": cfg.trainer.compile_mode,
        "grad_checkpointing": cfg.trainer.grad_checkpointing,
        "fused_loss": cfg.trainer.fused_loss,
        "tokens_per_s_per_gpu": tok_s_gpu,
        "tokens_per_s": tok_s_gpu * world,
        "step_s_median": statistics.median(r["step"] for r in rows),
        "step_s_mean": mean["step"],
        "breakdown_s": {k: mean[k] for k in PHASES},
        "flops_per_token": fpt,
        "model_tflops_per_gpu": model_tflops,
        "matmul_peak_tflops": peak,
        "mfu_measured": model_tflops / peak,
        "datasheet_peak_tflops": sheet,
        "mfu_datasheet": model_tflops / sheet if sheet else None,
        "peak_memory_gb": mem_gb,
        "memory_kind": "cuda max_memory_allocated" if cuda else "host max RSS",
        "param_change": max(float((a - b).abs().max()) for a, b in zip(after, before)),
        "loss": module.last_step_loss,
        "profile": profile,
    }


def format_report(r: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    b = r["breakdown_s"]
    sheet = f"{100 * r['mfu_datasheet']:.1f}%" if r["mfu_datasheet"] is not None else "n/a"
    phases = "  ".join(f"{k} {1e3 * b[k]:.1f}" for k in PHASES)
    return "\n".join(
        [
            f"{r['arch']} ctx {r['ctx_len']}, {r['tokens_per_step']} tokens/step, {r['world_size']} x {r['device']}, "
            f"compile {r['compile']} ({r['compile_mode']}), grad_checkpointing {r['grad_checkpointing']}, fused_loss {r['fused_loss']}",
            f"tokens/s per GPU {r['tokens_per_s_per_gpu']:.0f} (total {r['tokens_per_s']:.0f}); "
            f"step median {1e3 * r['step_s_median']:.1f} ms",
            f"MFU {100 * r['mfu_measured']:.1f}% of measured {r['matmul_peak_tflops']:.3g} TFLOP/s, {sheet} of "
            f"datasheet; model {r['model_tflops_per_gpu']:.3g} TFLOP/s per GPU",
            f"peak memory {r['peak_memory_gb']:.2f} GiB ({r['memory_kind']})",
            f"step breakdown (ms, mean): {phases}",
        ]
    )


def bench_train(
    config: str,
    overrides: list[str] | None = None,
    steps: int = 20,
    warmup: int = 5,
    stage: int = 0,
    json: str | None = None,
    profile: str | None = None,
    profile_steps: int = 2,
) -> dict[str, Any]:
    """Training throughput of a run config: tokens/s, MFU, memory and step-time breakdown.

    Args:
        config: run YAML.
        overrides: dotted overrides as for skein train, e.g. trainer.compile=false stages.0.micro_bsz=8.
        steps: measured optimizer steps.
        warmup: optimizer steps run first and not measured (compilation, allocator warmup).
        stage: index of the stage to measure.
        json: also write the figures to this JSON file.
        profile: after the measured steps, profile `profile_steps` more and write where the time goes
            (kernels by category and the costliest kernels on a GPU, operators on the CPU) to this file.
        profile_steps: optimizer steps profiled.
    """
    result = bench_config(load_config(config, overrides), steps, warmup, stage, profile, profile_steps)
    if is_global_zero():
        print(format_report(result))
        if profile is not None:
            print(f"profile of {profile_steps} more steps: {profile}")
        if json is not None:
            write_text_atomic(Path(json), jsonlib.dumps(result, indent=2))
        sys.stdout.flush()
    return result
