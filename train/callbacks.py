"""Callbacks of a training stage: checkpoints (periodic, at stage end, on SIGTERM/SIGUSR1),
weights-only snapshots (an export step), and metrics (CSV + wandb + progress bar)."""

from __future__ import annotations

import csv
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from skein.train.checkpoint import save_checkpoint
from skein.train.export import save_snapshot

# Dense bf16 peak of known GPUs, TFLOP/s, for MFU when log.peak_tflops is not set.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0, "4090": 165.0}


def step_done(module: Any, batch_idx: int) -> bool:
    """True on the micro-batch that completes an optimizer step."""
    return (batch_idx + 1) % module.plan.accumulate == 0


class CheckpointCallback(L.Callback):
    """Saves every `every_steps` optimizer steps, at the end of the stage, and when SIGTERM or
    SIGUSR1 arrives (then stops training after the save: the hook a SLURM requeue builds on)."""

    def __init__(
        self,
        out_dir: Path,
        every_steps: int,
        keep_last: int,
        tokens_before: int,
        stop_after_steps: int | None = None,
    ) -> None:
        self.out_dir, self.every_steps, self.keep_last = out_dir, every_steps, keep_last
        self.tokens_before, self.stop_after_steps = tokens_before, stop_after_steps
        self.signal_received: int | None = None
        self.interrupted = False
        self._old_handlers: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signal_received = signum

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        self.first_step = trainer.global_step
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (e.g. some notebook runners)
                pass

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)

    def save(self, trainer: L.Trainer, module: Any, stage_done: bool = False) -> Path:
        meta = {
            "stage_index": module.stage_index,
            "step": trainer.global_step,
            "tokens_stage": module.tokens_seen,
            "tokens_total": self.tokens_before + module.tokens_seen,
            "stage_done": stage_done,
            "time": time.time(),
        }
        return save_checkpoint(trainer, self.out_dir, meta, self.keep_last)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not step_done(module, batch_idx):
            return
        signalled = trainer.strategy.reduce_boolean_decision(self.signal_received is not None, all=False)
        budget_spent = (
            self.stop_after_steps is not None
            and trainer.global_step - self.first_step >= self.stop_after_steps
        )
        if (signalled or budget_spent) and trainer.global_step < module.plan.steps:
            self.save(trainer, module)
            self.interrupted = True
            trainer.should_stop = True
        elif trainer.global_step % self.every_steps == 0 and trainer.global_step < module.plan.steps:
            self.save(trainer, module)

    def save_stage_end(self, trainer: L.Trainer, module: Any) -> None:
        """Called by the run after `fit` returns: the stage's final checkpoint (unless a signal
        already saved and stopped it)."""
        if not self.interrupted:
            self.save(trainer, module, stage_done=trainer.global_step >= module.plan.steps)


class SnapshotCallback(L.Callback):
    """Writes the weights in RWKV-LM's .pth layout every `every_steps` steps (rank 0)."""

    def __init__(self, out_dir: Path, every_steps: int, dtype: torch.dtype) -> None:
        self.out_dir, self.every_steps, self.dtype = out_dir, every_steps, dtype

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (
            step_done(module, batch_idx)
            and trainer.global_step % self.every_steps == 0
            and trainer.is_global_zero
        ):
            name = f"rwkv-s{module.stage_index}-{trainer.global_step}.pth"
            save_snapshot(module.model, self.out_dir / "snapshots" / name, self.dtype)


class MetricsCallback(L.Callback):
    """Every `every_steps` optimizer steps: loss, lr, tokens, tokens/s, MFU, memory and gradient
    norm to <run>/metrics.csv, to the Lightning loggers (wandb), and onto the progress bar."""

    FIELDS = (
        "stage",
        "step",
        "tokens",
        "loss",
        "lr",
        "tokens_per_s",
        "mfu",
        "grad_norm",
        "gpu_mem_gb",
        "time",
    )

    def __init__(
        self, out_dir: Path, every_steps: int, tokens_before: int, peak_tflops: float | None, progress: bool
    ):
        self.path = out_dir / "metrics.csv"
        self.every_steps, self.tokens_before = every_steps, tokens_before
        self.peak_tflops, self.progress = peak_tflops, progress
        self.bar = None

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        self.t0 = self.t_last = time.perf_counter()
        self.step_last = trainer.global_step
        if self.peak_tflops is None and torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            self.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        self.flops_per_token = module.model.flops_per_token(module.plan.ctx_len)
        if trainer.is_global_zero:
            if not self.path.exists():
                with open(self.path, "w", newline="") as f:
                    csv.writer(f).writerow(self.FIELDS)
            if self.progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=module.plan.steps, initial=trainer.global_step, unit="step", dynamic_ncols=True
                )
                self.bar.set_description(f"stage {module.stage_index}")

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not step_done(module, batch_idx):
            return
        step = trainer.global_step
        now = time.perf_counter()
        tok_s = (step - self.step_last) * module.plan.tokens_per_step / max(now - self.t_last, 1e-9)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{module.last_step_loss:.4f}", lr=f"{module.current_lr:.2e}", tok_s=f"{tok_s:,.0f}"
            )
        if step % self.every_steps and step < module.plan.steps:
            return
        loss = module.last_step_loss
        if trainer.world_size > 1:  # every rank reaches this line: the mean over the global batch
            loss = float(trainer.strategy.reduce(torch.tensor(loss, dtype=torch.float64), reduce_op="mean"))
        grad_norm = module.grad_norm
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is not None:
            grad_norm = engine.get_global_grad_norm()
        mfu = None
        if self.peak_tflops:
            mfu = self.flops_per_token * tok_s / (self.peak_tflops * 1e12 * trainer.world_size)
        mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        row = {
            "stage": module.stage_index,
            "step": step,
            "tokens": self.tokens_before + module.tokens_seen,
            "loss": loss,
            "lr": module.current_lr,
            "tokens_per_s": tok_s,
            "mfu": mfu,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "gpu_mem_gb": mem,
            "time": now - self.t0,
        }
        self.t_last, self.step_last = now, step
        if trainer.is_global_zero:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow(["" if row[k] is None else row[k] for k in self.FIELDS])
            for logger in trainer.loggers:
                logger.log_metrics({k: v for k, v in row.items() if v is not None}, step=row["tokens"])

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.bar is not None:
            self.bar.close()
