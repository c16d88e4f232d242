"""The LightningModule: wraps any skein model for one training stage, sets the learning rate by
tokens seen, and trains either on whole sequences or on segments with the recurrent state carried
across them (truncated backpropagation through time)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from skein.rwkv.models import CausalLM, build_model, detach_state
from skein.train.config import RunConfig
from skein.train.losses import lm_loss
from skein.train.optim import build_optimizer
from skein.train.plan import StagePlan
from skein.train.schedule import AutoDecay
from skein.train.strategy import is_deepspeed


class LMModule(L.LightningModule):
    """Trains `model` for stage `stage_index` of `cfg`."""

    def __init__(
        self, cfg: RunConfig, stage_index: int, world_size: int, model: CausalLM | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.stage_index = stage_index
        self.stage = cfg.stages[stage_index]
        self.plan = StagePlan(self.stage, world_size, stage_index)
        self.model = model if model is not None else build_model(cfg.model)
        s = self.schedule = cfg.schedule
        self.lr_init = self.stage.lr_init or cfg.optim.lr_init
        self.lr_final = self.stage.lr_final or cfg.optim.lr_final
        self.decay_start: int | None = None
        """auto_exp: the token count at which the decay began (None: not yet)."""
        self.auto_decay = (
            AutoDecay(s.auto_window_tokens, s.auto_threshold, s.auto_smoothing)
            if s.kind == "auto_exp"
            else None
        )
        self.automatic_optimization = not self.stage.segmented
        self._step_losses: list[float] = []
        self.last_step_loss: float | None = None
        self.grad_norm: float | None = None

    @property
    def tokens_seen(self) -> int:
        """Tokens consumed by this stage's completed optimizer steps (all ranks)."""
        return self.global_step * self.plan.tokens_per_step

    def lr(self, tokens: int) -> float:
        """This stage's learning rate after `tokens` tokens."""
        return self.schedule.lr(tokens, self.lr_init, self.lr_final, self.plan.total_tokens, self.decay_start)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        offload = self.cfg.trainer.offload_optimizer and is_deepspeed(self.trainer.strategy)
        return build_optimizer(self.model, self.lr(0), o.betas, o.eps, o.weight_decay, cpu_offload=offload)

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
        if not self.stage.segmented:
            logits, _ = self.model(x)
            loss = lm_loss(logits, y, self.cfg.optim.l2wrap)
            self._record(loss)
            return loss
        return self._segmented_step(x, y, batch_idx)

    def _segmented_step(self, x: torch.Tensor, y: torch.Tensor, batch_idx: int) -> None:
        """Backward per segment with the state detached in between, so activation memory is
        bounded by segment_len; one optimizer step per `accumulate` micro-batches."""
        opt = self.optimizers()
        seg = self.stage.segment_len
        n_seg = x.shape[1] // seg
        state, total = None, 0.0
        for i in range(n_seg):
            sl = slice(i * seg, (i + 1) * seg)
            logits, state = self.model(x[:, sl], state)
            loss = lm_loss(logits, y[:, sl], self.cfg.optim.l2wrap) / n_seg
            self.manual_backward(loss / self.plan.accumulate)
            state = detach_state(state)
            total += loss.detach()
        self._record(total)
        if (batch_idx + 1) % self.plan.accumulate == 0:
            if self.cfg.optim.grad_clip > 0:
                self.clip_gradients(
                    opt, gradient_clip_val=self.cfg.optim.grad_clip, gradient_clip_algorithm="norm"
                )
            opt.step()
            opt.zero_grad()

    def _record(self, loss: torch.Tensor) -> None:
        self._step_losses.append(float(loss.detach()))
        if len(self._step_losses) == self.plan.accumulate:
            self.last_step_loss = sum(self._step_losses) / len(self._step_losses)
            self._step_losses = []
            if self.auto_decay is not None and self.decay_start is None:
                tokens = self.tokens_seen + self.plan.tokens_per_step
                if self.auto_decay.update(tokens, self.last_step_loss):
                    self.decay_start = tokens

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            self.grad_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skein"] = {
            "stage_index": self.stage_index,
            "tokens_seen": self.tokens_seen,
            "decay_start": self.decay_start,
            "auto_decay": self.auto_decay.state_dict() if self.auto_decay else None,
            "config": self.cfg.to_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("skein", {})
        if meta.get("stage_index", self.stage_index) != self.stage_index:
            raise ValueError(
                f"checkpoint belongs to stage {meta['stage_index']}, but stage {self.stage_index} is being resumed"
            )
        self.decay_start = meta.get("decay_start")
        if self.auto_decay is not None and meta.get("auto_decay"):
            self.auto_decay.load_state_dict(meta["auto_decay"])
