"""Callbacks of a training stage: checkpoints (periodic, at stage end, on SIGTERM/SIGUSR1),
weights-only snapshots (an export step), and metrics (CSV + wandb + progress bar)."""

from __future__ import annotations

import csv
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from skein.rwkv.convert.common import DTYPES
from skein.train.checkpoints.checkpoint import CheckpointMeta, save_checkpoint
from skein.train.commands.export import save_snapshot
from skein.train.config import CheckpointSection, LogSection, RunSection

# Dense bf16 peak of known GPUs, TFLOP/s, for MFU when log.peak_tflops is not set.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0, "4090": 165.0}


def step_done(module: Any, batch_idx: int) -> bool:
    """True on the micro-batch that completes an optimizer step."""
    return (batch_idx + 1) % module.plan.accumulate == 0


@dataclass(frozen=True)
class StagePosition:
    """Where a stage sits in the run: its index, its length in optimizer steps, the tokens of the
    stages before it, and the tokens per step of every stage started so far (this one last;
    recorded in each checkpoint)."""

    stage_index: int
    steps: int
    tokens_before: int
    tokens_per_step: list[int]

    @property
    def step_tokens(self) -> int:
        """Tokens per optimizer step of this stage."""
        return self.tokens_per_step[self.stage_index]

    def tokens_total(self, step: int) -> int:
        """Tokens of the run once this stage has done `step` steps."""
        return self.tokens_before + step * self.step_tokens


class TrainingClock:
    """The run's training time in seconds (metrics.csv `time`), continuous across resumes and
    stages: the time the resumed checkpoint recorded, plus the time spent inside each stage's
    training since (MetricsCallback starts and stops it; setup between stages is not counted)."""

    def __init__(self, before: float = 0.0) -> None:
        self.before = before
        self._since: float | None = None

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        self.before = self.elapsed()
        self._since = None

    def elapsed(self, now: float | None = None) -> float:
        """Training seconds so far (`now`: a time.perf_counter() reading, default the present)."""
        if self._since is None:
            return self.before
        return self.before + ((time.perf_counter() if now is None else now) - self._since)


class CheckpointCallback(L.Callback):
    """Saves every `checkpoint.every_steps` optimizer steps, at the end of the stage, after
    `run.stop_after_steps` steps of this invocation, and when SIGTERM or SIGUSR1 arrives (then
    stops training after the save: the hook a SLURM requeue builds on). Each checkpoint records
    the run's training time from `clock`."""

    def __init__(
        self,
        out_dir: Path,
        checkpoint: CheckpointSection,
        run: RunSection,
        position: StagePosition,
        clock: TrainingClock | None = None,
    ) -> None:
        self.out_dir, self.cfg, self.position = out_dir, checkpoint, position
        self.clock = clock or TrainingClock()
        self.stop_after_steps = run.stop_after_steps
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
        step = trainer.global_step
        meta = CheckpointMeta(
            stage_index=self.position.stage_index,
            step=step,
            tokens_stage=step * self.position.step_tokens,
            tokens_total=self.position.tokens_total(step),
            stage_done=stage_done,
            tokens_per_step=list(self.position.tokens_per_step),
            time=time.time(),
            elapsed=self.clock.elapsed(),
        )
        return save_checkpoint(trainer, self.out_dir, meta, self.cfg.keep_last)

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
        if (signalled or budget_spent) and trainer.global_step < self.position.steps:
            self.save(trainer, module)
            self.interrupted = True
            trainer.should_stop = True
        elif trainer.global_step % self.cfg.every_steps == 0 and trainer.global_step < self.position.steps:
            self.save(trainer, module)

    def save_stage_end(self, trainer: L.Trainer, module: Any) -> None:
        """Called by the run after `fit` returns: the stage's final checkpoint (unless a signal
        or the step budget already saved and stopped it)."""
        if not self.interrupted:
            self.save(trainer, module, stage_done=trainer.global_step >= self.position.steps)


class SnapshotCallback(L.Callback):
    """Writes the weights in RWKV-LM's .pth layout every `checkpoint.snapshot_every_steps` steps
    in `checkpoint.snapshot_dtype` (rank 0)."""

    def __init__(self, out_dir: Path, checkpoint: CheckpointSection, stage_index: int) -> None:
        self.out_dir, self.every_steps = out_dir, checkpoint.snapshot_every_steps
        self.dtype, self.stage_index = DTYPES[checkpoint.snapshot_dtype], stage_index

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (
            step_done(module, batch_idx)
            and trainer.global_step % self.every_steps == 0
            and trainer.is_global_zero
        ):
            name = f"rwkv-s{self.stage_index}-{trainer.global_step}.pth"
            save_snapshot(module.model, self.out_dir / "snapshots" / name, self.dtype)


def drop_rows_after(path: Path, fields: tuple[str, ...], stage_index: int, step: int) -> int:
    """Rewrite a run's CSV log (metrics.csv, eval.csv) without the rows past (stage_index, step)
    (logged before a kill, to be logged again by the resume), with `fields` as its columns,
    atomically: a temporary file in the run directory, renamed. Returns how many rows were dropped."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = tuple(reader.fieldnames or ())
    kept = [r for r in rows if (int(r["stage"]), int(r["step"])) <= (stage_index, step)]
    if len(kept) == len(rows) and header == fields:
        return 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fields, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(rows) - len(kept)


class MetricsCallback(L.Callback):
    """Every `log.every_steps` optimizer steps: loss, lr, tokens, tokens/s, MFU, memory, gradient
    norm and the steps skipped for a non-finite loss to <run>/metrics.csv, to the Lightning loggers
    (wandb), and onto the progress bar. On (re)start, rows past the restored step are dropped, so
    each step appears once. `time` is the run's training time from `clock` (it starts and stops
    the clock with each stage's training)."""

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
        "skipped",
        "time",
    )

    def __init__(
        self, out_dir: Path, log: LogSection, position: StagePosition, clock: TrainingClock | None = None
    ):
        self.path = out_dir / "metrics.csv"
        self.clock = clock or TrainingClock()
        self.every_steps, self.position = log.every_steps, position
        self.peak_tflops, self.progress = log.peak_tflops, log.progress_bar
        self.bar = None

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        self.clock.start()
        self.t_last = time.perf_counter()
        self.step_last = trainer.global_step
        if self.peak_tflops is None and torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            self.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        self.flops_per_token = module.model.flops_per_token(module.plan.ctx_len)
        if trainer.is_global_zero:
            if not self.path.exists():
                with open(self.path, "w", newline="") as f:
                    csv.writer(f).writerow(self.FIELDS)
            else:
                drop_rows_after(self.path, self.FIELDS, self.position.stage_index, trainer.global_step)
            if self.progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=self.position.steps, initial=trainer.global_step, unit="step", dynamic_ncols=True
                )
                self.bar.set_description(f"stage {self.position.stage_index}")

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not step_done(module, batch_idx):
            return
        step = trainer.global_step
        now = time.perf_counter()
        tok_s = (step - self.step_last) * self.position.step_tokens / max(now - self.t_last, 1e-9)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{module.last_step_loss:.4f}", lr=f"{module.current_lr:.2e}", tok_s=f"{tok_s:,.0f}"
            )
        if step % self.every_steps and step < self.position.steps:
            return
        loss = module.last_step_loss
        if trainer.world_size > 1:  # every rank reaches this line: the mean over the global batch
            loss = float(trainer.strategy.reduce(torch.tensor(loss, dtype=torch.float64), reduce_op="mean"))
        grad_norm = module.global_grad_norm()
        mfu = None
        if self.peak_tflops:
            mfu = self.flops_per_token * tok_s / (self.peak_tflops * 1e12 * trainer.world_size)
        mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        row = {
            "stage": self.position.stage_index,
            "step": step,
            "tokens": self.position.tokens_total(step),
            "loss": loss,
            "lr": module.current_lr,
            "tokens_per_s": tok_s,
            "mfu": mfu,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "gpu_mem_gb": mem,
            "skipped": module.skipped_steps,
            "time": self.clock.elapsed(now),
        }
        self.t_last, self.step_last = now, step
        if trainer.is_global_zero:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow(["" if row[k] is None else row[k] for k in self.FIELDS])
            for logger in trainer.loggers:
                logger.log_metrics({k: v for k, v in row.items() if v is not None}, step=row["tokens"])

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        self.clock.stop()
        if self.bar is not None:
            self.bar.close()
