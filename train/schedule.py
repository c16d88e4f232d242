"""Learning rate as a function of tokens seen within a stage.

constant_exp (the RWKV recipe): lr_init for the first (1 - decay_fraction) of the tokens, then
lr_init * (lr_final / lr_init) ** progress over the rest. cosine: lr_final + (lr_init - lr_final)
* (1 + cos(pi * progress)) / 2 over all tokens. auto_exp: constant until `AutoDecay` decides the
loss has plateaued, then exponential decay over the remaining tokens. Every kind multiplies by the
warmup factor 0.01 + 0.99 * tokens / warmup_tokens while tokens < warmup_tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Schedule:
    kind: str
    lr_init: float
    lr_final: float
    total_tokens: int
    warmup_tokens: int = 0
    decay_fraction: float = 0.5
    decay_start: int | None = None
    """auto_exp: the token count at which decay began (None: not yet)."""

    def lr(self, tokens: int) -> float:
        """Learning rate after `tokens` tokens of this stage."""
        warm = 1.0
        if self.warmup_tokens and tokens < self.warmup_tokens:
            warm = 0.01 + 0.99 * tokens / self.warmup_tokens
        if self.kind == "cosine":
            p = min(tokens / self.total_tokens, 1.0)
            return warm * (self.lr_final + (self.lr_init - self.lr_final) * 0.5 * (1 + math.cos(math.pi * p)))
        if self.kind == "constant_exp":
            start = self.total_tokens * (1 - self.decay_fraction)
        elif self.kind == "auto_exp":
            start = self.decay_start if self.decay_start is not None else None
        else:
            raise ValueError(f"schedule.kind: unknown kind {self.kind!r}")
        if start is None or tokens <= start:
            return warm * self.lr_init
        p = min((tokens - start) / max(self.total_tokens - start, 1), 1.0)
        return warm * self.lr_init * (self.lr_final / self.lr_init) ** p


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
