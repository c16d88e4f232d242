"""`skein bench train --profile PATH`: where a training step's time goes, kernel by kernel.

ProfileSteps runs torch.profiler over a few optimizer steps taken after the measured window (so the
profiler's overhead never touches the timed figures) and writes a text report: on a GPU, the device
time of every kernel summed by category (matmul, recurrence kernels, Inductor's fused kernels,
optimizer, copies, communication, other) and the kernels that take the most; on the CPU, the
operators with the most self time.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.autograd import DeviceType

from skein.train.checkpoints.checkpoint import write_text_atomic
from skein.train.loop.callbacks import step_done

CATEGORIES = (
    ("matmul", re.compile(r"gemm|cutlass|xmma|nvjet|cublas|sm\d+_.*(tn|nt|nn)|wgmma", re.I)),
    ("recurrence kernels", re.compile(r"rwkv|wkv|delta_product|_chunk_|bwd_cuda", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach|l2norm|lpnorm", re.I)),
    ("communication", re.compile(r"nccl|allreduce|all_gather|reduce_scatter", re.I)),
    ("Inductor fused", re.compile(r"^triton_", re.I)),
    ("copies", re.compile(r"memcpy|memset|copy_kernel|CatArrayBatchedCopy", re.I)),
)
"""A kernel's category is the first whose pattern its name matches; the rest is `other`."""


def category(name: str) -> str:
    """The category of a kernel name (CATEGORIES)."""
    return next((c for c, pat in CATEGORIES if pat.search(name)), "other")


def device_kernels(events: list[Any]) -> list[Any]:
    """The device kernels among profiler events. Ranges such as `Optimizer.step#AdamW.step` also
    appear on the device timeline (gpu_user_annotation), spanning from their first kernel to their
    last and so over kernels launched before them that were still running: counting them would add
    a kernel's time twice."""
    return [
        e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    ]


def kernel_report(events: list[Any], steps: int, top: int = 30, step_ms: float | None = None) -> str:
    """Device time per step of `events` (FunctionEvents of device kernels) by category and by
    kernel, as text tables; with `step_ms` (the unprofiled step's wall time), how much of the step
    the kernels fill."""
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        row = per_kernel[e.name]
        row[0] += e.time_range.elapsed_us()
        row[1] += 1
    total = sum(t for t, _ in per_kernel.values()) or 1.0
    per_cat: dict[str, float] = defaultdict(float)
    for name, (t, _) in per_kernel.items():
        per_cat[category(name)] += t
    lines = [f"device time per step: {total / steps / 1e3:.1f} ms over {steps} steps ({len(events)} kernels)"]
    if step_ms:
        lines.append(
            f"timed step (not profiled): {step_ms:.1f} ms, of which the kernels fill "
            f"{100 * total / steps / 1e3 / step_ms:.0f}% (well under 100%: the GPU waits on the host)"
        )
    lines.append("")
    lines += ["| category | ms/step | share |", "| --- | --- | --- |"]
    for c, t in sorted(per_cat.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {c} | {t / steps / 1e3:.1f} | {100 * t / total:.1f}% |")
    lines += ["", "| kernel | category | ms/step | calls/step | share |", "| --- | --- | --- | --- | --- |"]
    for name, (t, n) in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(
            f"| `{short}` | {category(name)} | {t / steps / 1e3:.2f} | {n / steps:.0f} | {100 * t / total:.1f}% |"
        )
    return "\n".join(lines)


def operator_report(prof: Any, steps: int, top: int = 30) -> str:
    """Self CPU time per step of the operators that take the most (the CPU's report)."""
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    lines = [f"CPU self time per step over {steps} steps", "", "| operator | ms/step | calls/step |",
             "| --- | --- | --- |"]  # fmt: skip
    for e in rows:
        lines.append(f"| `{e.key}` | {e.self_cpu_time_total / steps / 1e3:.2f} | {e.count / steps:.0f} |")
    return "\n".join(lines)


class ProfileSteps(L.Callback):
    """Profiles the optimizer steps from `start` (a global step) to the end of training and writes
    the report to `path` (checkpoint.write_text_atomic); `step_ms` gives the wall time of an
    unprofiled step, for the report's share of it that kernels fill."""

    def __init__(
        self, start: int, path: str | Path, cuda: bool, step_ms: Callable[[], float | None] | None = None
    ) -> None:
        self.start, self.path, self.cuda = start, Path(path), cuda
        self.step_ms = step_ms
        self.prof: Any = None
        self.steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if self.prof is None and trainer.global_step >= self.start:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                torch.cuda.synchronize()
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.prof is not None and step_done(module, batch_idx):
            self.steps += 1

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.prof is None:
            return
        if self.cuda:
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        steps = max(self.steps, 1)
        if self.cuda:
            step_ms = self.step_ms() if self.step_ms else None
            text = kernel_report(device_kernels(self.prof.events()), steps, step_ms=step_ms)
        else:
            text = operator_report(self.prof, steps)
        write_text_atomic(self.path, text + "\n")
