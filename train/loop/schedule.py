"""The run config's `schedule:` section and the learning rate it gives as a function of tokens
seen within a stage.

constant_exp (the RWKV recipe): lr_init for the first (1 - decay_fraction) of the tokens, then
lr_init * (lr_final / lr_init) ** progress over the rest. cosine: lr_final + (lr_init - lr_final)
* (1 + cos(pi * progress)) / 2 over all tokens. auto_exp: constant until `AutoDecay` decides the
loss has plateaued, then exponential decay over the remaining tokens. rwkv_lm_cosine (RWKV-LM's
--my_exit_tokens cosine, src/trainer.py): the same cosine with progress (tokens - warmup_tokens) /
(budget - warmup_tokens), clamped to [0, 1], where budget is the stage's `tokens` as written (its
--my_exit_tokens), so the cosine starts after warmup. Every kind multiplies by the warmup factor
0.01 + 0.99 * tokens / warmup_tokens while tokens < warmup_tokens (RWKV-LM: 0.01 + 0.99 * step /
warmup_steps for step < warmup_steps, the step counting completed optimizer steps, so its first
step runs at 0.01 lr_init; warmup_tokens = warmup_steps * ctx_len * micro_bsz * GPUs gives the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from skein.train.typed import ConfigError


@dataclass(kw_only=True)
class ScheduleSection:
    kind: Literal["constant_exp", "cosine", "auto_exp", "rwkv_lm_cosine"] = "constant_exp"
    """constant_exp: warmup, constant lr_init, then exponential decay to lr_final over the last
    decay_fraction of the tokens; cosine: warmup then cosine from lr_init to lr_final; auto_exp:
    constant until the smoothed loss improvement per auto_window_tokens drops below auto_threshold,
    then exponential decay to lr_final over the remaining tokens; rwkv_lm_cosine: RWKV-LM's cosine,
    from lr_init at the end of warmup to lr_final at the stage's `tokens` (its --my_exit_tokens)."""
    warmup_tokens: int = 0
    """Linear warmup length in tokens (lr multiplied by 0.01 + 0.99 * progress)."""
    decay_fraction: float = 0.5
    """constant_exp: fraction of the stage's tokens spent decaying."""
    auto_window_tokens: int = 40_000_000
    """auto_exp: the token window over which the loss improvement is measured."""
    auto_threshold: float = 3e-4
    """auto_exp: start decaying when the smoothed loss improves by less than this per window."""
    auto_smoothing: float = 0.99
    """auto_exp: exponential-moving-average factor for the loss."""

    def __post_init__(self) -> None:
        if self.warmup_tokens < 0:
            raise ConfigError(f"schedule.warmup_tokens must be >= 0, got {self.warmup_tokens}")
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError(f"schedule.decay_fraction must lie in [0, 1], got {self.decay_fraction}")
        if not 0 <= self.auto_smoothing < 1:
            raise ConfigError(f"schedule.auto_smoothing must lie in [0, 1), got {self.auto_smoothing}")
        if self.auto_window_tokens <= 0:
            raise ConfigError(f"schedule.auto_window_tokens must be positive, got {self.auto_window_tokens}")

    def lr(
        self,
        tokens: int,
        lr_init: float,
        lr_final: float,
        total_tokens: int,
        decay_start: int | None = None,
        budget_tokens: int | None = None,
    ) -> float:
        """Learning rate after `tokens` of a stage of `total_tokens` that peaks at lr_init and ends
        at lr_final; `decay_start` is the token count at which auto_exp began decaying (None: not yet);
        `budget_tokens` is the stage's `tokens` as written, where rwkv_lm_cosine ends (None: total_tokens)."""
        warm = 1.0
        if self.warmup_tokens and tokens < self.warmup_tokens:
            warm = 0.01 + 0.99 * tokens / self.warmup_tokens
        if self.kind == "rwkv_lm_cosine":
            end = budget_tokens or total_tokens
            p = min(max((tokens - self.warmup_tokens) / max(end - self.warmup_tokens, 1), 0.0), 1.0)
            ratio = lr_final / lr_init  # RWKV-LM's expression, in its order: the same floats
            return lr_init * ((0.5 + ratio / 2) + (0.5 - ratio / 2) * math.cos(math.pi * p)) * warm
        if self.kind == "cosine":
            p = min(tokens / total_tokens, 1.0)
            return warm * (lr_final + (lr_init - lr_final) * 0.5 * (1 + math.cos(math.pi * p)))
        start = total_tokens * (1 - self.decay_fraction) if self.kind == "constant_exp" else decay_start
        if start is None or tokens <= start:
            return warm * lr_init
        p = min((tokens - start) / max(total_tokens - start, 1), 1.0)
        return warm * lr_init * (lr_final / lr_init) ** p


@dataclass
class AutoDecay:
    """Decides when auto_exp starts decaying: keeps an EMA of the loss, and once per window of
    `window_tokens` compares it with the EMA one window earlier; a gain below `threshold` starts
    the decay (the RWKV paper's rule of thumb: < 3e-4 per 40 M tokens)."""

    window_tokens: int
    threshold: float
    smoothing: float = 0.99
    ema: float | None = None
    last_ema: float | None = None
    next_check: int | None = None

    def update(self, tokens: int, loss: float) -> bool:
        """Feed the loss after `tokens` tokens; True when the plateau is reached."""
        self.ema = loss if self.ema is None else self.smoothing * self.ema + (1 - self.smoothing) * loss
        if self.next_check is None:
            self.next_check = tokens + self.window_tokens
            return False
        if tokens < self.next_check:
            return False
        self.next_check = tokens + self.window_tokens
        plateau = self.last_ema is not None and self.last_ema - self.ema < self.threshold
        self.last_ema = self.ema
        return plateau

    def state_dict(self) -> dict:
        return {"ema": self.ema, "last_ema": self.last_ema, "next_check": self.next_check}

    def load_state_dict(self, d: dict) -> None:
        self.ema, self.last_ema, self.next_check = d["ema"], d["last_ema"], d["next_check"]
