"""The LightningModule: wraps any skein model for one training stage, sets the learning rate by
tokens seen, and trains either on whole sequences or on segments with the recurrent state carried
across them (exact or truncated backpropagation through time, train/loop/segments.py)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from skein.rwkv.models import CausalLM
from skein.train.config import RunConfig
from skein.train.loop.losses import model_loss
from skein.train.loop.optim import build_optimizer, param_groups
from skein.train.loop.schedule import AutoDecay
from skein.train.loop.segments import segmented_loss
from skein.train.parallel.blocks import begin_graph_step
from skein.train.parallel.execution import Execution
from skein.train.plan import StagePlan
from skein.train.typed import ConfigError


class NonFiniteLossError(ConfigError):
    """The loss became NaN or infinite and optim.on_nonfinite says to stop (or too many steps
    were skipped)."""


class LMModule(L.LightningModule):
    """Trains `model` for stage `stage_index` of `cfg`, as `plan` (the run's plan of that stage,
    with the tokens per step its checkpoints record on a resume) under `execution`."""

    def __init__(
        self, cfg: RunConfig, stage_index: int, model: CausalLM, plan: StagePlan, execution: Execution
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.stage_index = stage_index
        self.stage = cfg.stages[stage_index]
        self.plan = plan
        self.execution = execution
        self.model = model
        s = self.schedule = cfg.schedule
        self.lr_init, self.lr_final = cfg.stage_lrs(stage_index)
        self.decay_start: int | None = None
        """auto_exp: the token count at which the decay began (None: not yet)."""
        self.auto_decay = (
            AutoDecay(s.auto_window_tokens, s.auto_threshold, s.auto_smoothing)
            if s.kind == "auto_exp"
            else None
        )
        self._step_losses: list[torch.Tensor] = []
        self._pending_loss: torch.Tensor | None = None
        """The mean loss of a step whose micro-batches are done, until its optimizer step reads it."""
        self.last_step_loss: float | None = None
        self.grad_norm: torch.Tensor | None = None
        """The global gradient norm before clipping (a device tensor: read it only to log)."""
        self.skipped_steps = 0
        self._skip_update = False

    @property
    def tokens_seen(self) -> int:
        """Tokens consumed by this stage's completed optimizer steps (all ranks)."""
        return self.global_step * self.plan.tokens_per_step

    def lr(self, tokens: int) -> float:
        """This stage's learning rate after `tokens` tokens."""
        return self.schedule.lr(
            tokens, self.lr_init, self.lr_final, self.plan.total_tokens, self.decay_start, self.stage.tokens
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        if self.execution.offload_optimizer:
            groups = param_groups(self.model, o.weight_decay)
            return self.execution.offloaded_optimizer(groups, self.lr(0), o.betas, o.eps)
        # The fused AdamW unscales fp16 gradients inside its step, after on_before_optimizer_step
        # would have clipped them; with bf16 or fp32 there is nothing to unscale.
        fused = self.execution.precision != "16-mixed"
        return build_optimizer(self.model, self.lr(0), o.betas, o.eps, o.weight_decay, fused=fused)

    def _set_lr(self) -> None:
        lr = self.lr(self.tokens_seen)
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
        self.current_lr = lr

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._set_lr()

    def forward(self, idx: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        return self.model(idx, state)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        x, y = batch
        begin_graph_step(self.model)
        if not self.stage.segmented:
            loss = self._loss(x, y)
            self._record(loss)
            return loss
        return self._segmented_step(x, y)

    def _loss_chunk_tokens(self) -> int | None:
        """Rows per chunk of the fused head + cross entropy, or None for plain logits."""
        tc = self.cfg.trainer
        return tc.loss_chunk_tokens if tc.fused_loss else None

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whole-sequence loss (train/loop/losses.py model_loss)."""
        chunk = self._loss_chunk_tokens()
        return model_loss(self.model, x, y, self.cfg.optim.l2wrap, chunk, compiled=self.execution.compile)[0]

    def _segmented_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sample in segments of segment_len with the state carried (see train/loop/segments.py):
        one loss and one backward, so accumulation, clipping and the strategy work unchanged."""
        loss = segmented_loss(
            self.model,
            x,
            y,
            self.stage.segment_len,
            self.stage.bptt_segments,
            self.cfg.optim.l2wrap,
            self._loss_chunk_tokens(),
            partitioned_params=self.execution.partitioned_params,
            compiled=self.execution.compile,
        )
        self._record(loss)
        return loss

    def _record(self, loss: torch.Tensor) -> None:
        """Keep the micro-batch loss on the device: the host reads a step's loss once, in
        on_before_optimizer_step, so it never waits for the GPU between micro-batches."""
        self._step_losses.append(loss.detach().float())
        if len(self._step_losses) == self.plan.accumulate:
            self._pending_loss = torch.stack(self._step_losses).mean()
            self._step_losses = []

    def _finish_step_loss(self) -> None:
        """The step's loss to the host (one synchronisation per step), the non-finite decision
        (every rank takes part, so all of them decide the same) and the auto_exp decay update."""
        value = float(self._pending_loss)
        self._pending_loss = None
        if self.trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            self._on_nonfinite(value)
        self.last_step_loss = value
        if self.auto_decay is not None and self.decay_start is None:
            tokens = self.tokens_seen + self.plan.tokens_per_step
            if self.auto_decay.update(tokens, value):
                self.decay_start = tokens

    def _on_nonfinite(self, value: float) -> None:
        step = self.global_step + 1
        o = self.cfg.optim
        where = f"stage {self.stage_index} step {step}: the loss is not finite (this rank: {value})"
        if o.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"{where}; stopped before saving anything (the newest checkpoint is from before this "
                "step). Lower the learning rate, check the data, or set optim.on_nonfinite=skip"
            )
        if not self._skip_update:
            self._skip_update = True
            self.skipped_steps += 1
            if self.skipped_steps > o.max_skipped:
                raise NonFiniteLossError(
                    f"{where}; {self.skipped_steps} steps of this stage were skipped, more than "
                    f"optim.max_skipped={o.max_skipped}: the run is diverging"
                )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._pending_loss is not None:
            self._finish_step_loss()
        if self._skip_update:  # the optimizer skips parameters without a gradient: no update
            self._skip_update = False
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self.grad_norm = None
            return
        if self.execution.engine_clips:  # the engine clips and measures the norm itself
            return
        grads = [p for p in self.model.parameters() if p.grad is not None]
        if grads:  # clipped here rather than by Lightning, which refuses it for the fused AdamW
            clip = self.cfg.optim.grad_clip or math.inf
            self.grad_norm = torch.nn.utils.clip_grad_norm_(grads, clip, foreach=True).detach()

    def global_grad_norm(self) -> Any:
        """The last step's gradient norm before clipping (the engine's where it clips), to log."""
        return self.execution.grad_norm(self.trainer.strategy, self.grad_norm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skein"] = {
            "stage_index": self.stage_index,
            "tokens_seen": self.tokens_seen,
            "decay_start": self.decay_start,
            "auto_decay": self.auto_decay.state_dict() if self.auto_decay else None,
            "skipped_steps": self.skipped_steps,
            "accumulate": self.plan.accumulate,
            "config": self.cfg.to_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("skein", {})
        if meta.get("stage_index", self.stage_index) != self.stage_index:
            raise ValueError(
                f"checkpoint belongs to stage {meta['stage_index']}, but stage {self.stage_index} is being resumed"
            )
        self.decay_start = meta.get("decay_start")
        self.skipped_steps = meta.get("skipped_steps", 0)
        if self.auto_decay is not None and meta.get("auto_decay"):
            self.auto_decay.load_state_dict(meta["auto_decay"])
        self._realign_batch_count(checkpoint, meta.get("accumulate"))

    def _realign_batch_count(self, checkpoint: dict[str, Any], saved_accumulate: int | None) -> None:
        """Lightning counts micro-batches, and steps the optimizer when that count reaches a
        multiple of the accumulation. A resume on another world size keeps the tokens per step
        with another accumulation: shift the count so that each step boundary stays one (saves
        happen on a boundary, so the count is global_step * accumulate plus Lightning's offset)."""
        if saved_accumulate is None or saved_accumulate == self.plan.accumulate:
            return
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if progress is None:
            return
        shift = checkpoint["global_step"] * (self.plan.accumulate - saved_accumulate)
        for part in ("total", "current"):
            for key in progress[part]:
                progress[part][key] += shift
