"""Supervised training and scoring on in-memory token tasks (MQAR, word problems): AdamW with a
linear warmup and cosine decay, bf16 autocast on CUDA, cross entropy over labelled positions
(label -100 is ignored), early stop at a target accuracy."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from skein.data.mqar import IGNORE
from skein.train.eval.common import autocast
from skein.train.typed import ConfigError

CALIBRATION = (5, 15)
"""Steps between which the time per step is measured for a time budget (after warm-up)."""


@dataclass(frozen=True)
class FitConfig:
    """How a synthetic task is trained."""

    lr: float
    epochs: int
    batch_size: int
    weight_decay: float = 0.1
    """AdamW weight decay of the matrices (vectors get none)."""
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_fraction: float = 0.05
    """Fraction of the steps with a linear warmup from 0 to lr; cosine decay to 0 after it."""
    target_accuracy: float = 1.01
    """Stop after an epoch whose test accuracy reaches this (above 1: never)."""
    eval_batch_size: int = 256
    max_seconds: float | None = None
    """Training time budget, counted from the end of the first step (after kernel compilation):
    after a few timed steps the planned steps (and the cosine schedule with them) shrink to what
    fits; the result says how many ran."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} {getattr(self, name)} must be at least 1")


@torch.no_grad()
def score(
    model: nn.Module, inputs: Tensor, labels: Tensor, batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(correct, counted) per position, float64 [T]: argmax predictions equal to the label at the
    labelled positions, summed over the examples."""
    model.eval()
    correct = torch.zeros(inputs.shape[1], dtype=torch.float64)
    counted = torch.zeros(inputs.shape[1], dtype=torch.float64)
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)
        with autocast(device):
            pred = model(x).argmax(-1)
        mask = y != IGNORE
        correct += ((pred == y) & mask).sum(0).double().cpu()
        counted += mask.sum(0).double().cpu()
    model.train()
    return correct, counted


def accuracy(correct: Tensor, counted: Tensor) -> float:
    return float(correct.sum() / counted.sum().clamp_min(1))


def fit(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    cfg: FitConfig,
    device: torch.device,
    seed: int,
    desc: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Train on `train`, score on `test` after every epoch; returns the final test accuracy, the
    final (correct, counted) per position (`score`), the best accuracy, the last training loss and
    the epochs run."""
    model.to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    inputs, labels = (t.to(device) for t in train)  # once, not a copy per batch
    steps_per_epoch = math.ceil(len(inputs) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_fraction * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    result = {"accuracy": 0.0, "best_accuracy": 0.0, "train_loss": float("nan"), "epochs": 0,
              "steps": 0, "planned_steps": total}  # fmt: skip
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    step, started = 0, time.monotonic()
    for epoch in range(cfg.epochs):
        if step >= total:
            break
        order = torch.randperm(len(inputs), generator=gen).to(device)
        for i in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            idx = order[i : i + cfg.batch_size]
            x, y = inputs[idx], labels[idx]
            with autocast(device):
                logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update()
            step += 1
            if step == 1:  # the budget starts after the first step's one-time kernel compilation
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.monotonic()
            if cfg.max_seconds is not None and step in (CALIBRATION[0], CALIBRATION[1]):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if step == CALIBRATION[0]:
                    t0 = time.monotonic()
                else:
                    per_step = (time.monotonic() - t0) / (CALIBRATION[1] - CALIBRATION[0])
                    left = cfg.max_seconds - (time.monotonic() - started)
                    total = min(total, step + max(0, int(left / per_step)))
                    bar.total = total
        per_position = score(model, *test, cfg.eval_batch_size, device)
        acc = accuracy(*per_position)
        result.update(
            per_position=per_position,
            accuracy=acc,
            best_accuracy=max(result["best_accuracy"], acc),
            train_loss=float(loss.detach()),
            epochs=epoch + 1,
            steps=step,
            seconds=time.monotonic() - started,
        )
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{acc:.3f}")
        if acc >= cfg.target_accuracy:
            break
    bar.close()
    return result
