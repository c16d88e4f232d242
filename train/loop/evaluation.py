"""Evaluation during training: `PeriodicEval` runs named evaluators every N optimizer steps and
appends their numbers to <run>/eval.csv (and the loggers). `ValidationLoss` is the first
evaluator: the mean next-token loss on fixed held-out samples (with `chunk_tokens`, through the
fused chunked head, so no logits of the whole batch exist at long contexts). Other suites plug in as more
evaluators: any callable model -> {metric: value} run on every rank, reducing across ranks itself.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from skein.data.dataset import PretrainDataset
from skein.rwkv.models import CausalLM
from skein.train.loop.callbacks import drop_rows_after, step_done
from skein.train.loop.losses import model_loss
from skein.train.parallel.blocks import begin_graph_step

Evaluator = Callable[[CausalLM, L.Trainer], dict[str, float]]


class ValidationLoss:
    """Mean loss over the first `samples` samples of the held-out shards (the same samples at every
    evaluation); the samples are split over the ranks and the sums reduced."""

    def __init__(
        self, dataset: PretrainDataset, samples: int, micro_bsz: int, chunk_tokens: int | None = None
    ) -> None:
        self.dataset = dataset
        self.samples, self.micro_bsz, self.chunk_tokens = samples, micro_bsz, chunk_tokens

    @torch.no_grad()
    def __call__(self, model: CausalLM, trainer: L.Trainer) -> dict[str, float]:
        with trainer.strategy.precision_plugin.forward_context():
            total = self.sums(model, trainer.global_rank, trainer.world_size)
        if trainer.world_size > 1:
            total = trainer.strategy.reduce(total, reduce_op="sum")
        return {"val_loss": float(total[0] / total[1])}

    @torch.no_grad()
    def sums(self, model: CausalLM, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """[loss sum, sample count] (float64) over this rank's share of the samples."""
        device = next(model.parameters()).device
        mine = list(range(rank, self.samples, world_size))
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for i in range(0, len(mine), self.micro_bsz):
            batch = [self.dataset[n] for n in mine[i : i + self.micro_bsz]]
            x = torch.stack([b[0] for b in batch]).to(device)
            y = torch.stack([b[1] for b in batch]).to(device)
            begin_graph_step(model)
            total[0] += model_loss(model, x, y, chunk_tokens=self.chunk_tokens)[0].double() * len(batch)
            total[1] += len(batch)
        return total


class PeriodicEval(L.Callback):
    """Every `every_steps` optimizer steps (and at the end of the stage), run each evaluator on
    every rank; rank 0 appends `stage, step, tokens, metric, value` rows to <run>/eval.csv. A resume
    first drops the rows past the restored step (written before a kill; the resume writes them
    again)."""

    FIELDS = ("stage", "step", "tokens", "metric", "value")

    def __init__(
        self, out_dir: Path, every_steps: int, tokens_before: int, evaluators: list[Evaluator]
    ) -> None:
        self.path = out_dir / "eval.csv"
        self.every_steps, self.tokens_before, self.evaluators = every_steps, tokens_before, evaluators
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.is_global_zero and self.path.exists():
            drop_rows_after(self.path, self.FIELDS, module.stage_index, trainer.global_step)

    def _run(self, trainer: L.Trainer, module: Any) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        results: dict[str, float] = {}
        for evaluate in self.evaluators:
            results.update(evaluate(module.model, trainer))
        if not trainer.is_global_zero:
            return
        tokens = self.tokens_before + module.tokens_seen
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(self.FIELDS)
            for name, value in results.items():
                writer.writerow([module.stage_index, step, tokens, name, value])
        for logger in trainer.loggers:
            logger.log_metrics(results, step=tokens)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if step_done(module, batch_idx) and trainer.global_step % self.every_steps == 0:
            self._run(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.global_step >= module.plan.steps:
            self._run(trainer, module)
