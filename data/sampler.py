"""Which tokens a sample reads (the magic-prime order) and which samples a rank takes per step.

Magic-prime order (RWKV-LM's "magic prime", made exact and multi-epoch). A token stream of N tokens
has n_chunks = (N - 1) // ctx_len chunk starts c whose window [c ctx_len, c ctx_len + ctx_len + 1)
fits. p = magic_prime(n_chunks) is the largest prime p < n_chunks with p % 3 == 2; then x -> x^3
is a bijection of Z_p (gcd(3, p - 1) = 1), and so is x -> f x^3 mod p for any f not divisible by p.
With f = floor(p (sqrt(5) - 1) / 2) (computed exactly as (isqrt(5 p^2) - p) // 2), sample i of an
epoch (0 <= i < p) starts at chunk (m_e f i^3) mod p, where m_e = (e mod (p - 1)) + 1 for epoch e:
every epoch visits each of the chunks 0..p-1 exactly once, epoch 0 in RWKV-LM's order (its sample
ii = 1, 2, ... is our i = ii), later epochs in a different order (the multiplier changes), all
deterministic. A dataset's k-th sample
(k = 0, 1, ... over the whole run) is sample k mod p of epoch k // p. The chunks p..n_chunks-1 are
never read; RWKV-LM asserts p / n_chunks > 0.9, which holds for all but tiny datasets.

RWKV-LM's exact order (data.sample_offset, data.pass_order): its first sample is ii = 1, and every
later pass repeats the first pass's order (its chunk is (f ii^3) mod p for every ii). With offset o
the k-th sample is sample number k + o of the order above, and with `repeat` the multiplier stays 1
in every epoch; offset 1 and repeat give RWKV-LM's chunk for its sample ii = k + 1.

Steps: at optimizer step s the global batch is the samples [s G, (s + 1) G); rank r of W takes
s G + r + j W for j < G / W. The union over ranks is the same for every W that divides G, so a run
may resume on a different number of GPUs with the same samples per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler

# Deterministic Miller-Rabin witnesses for every n < 3.3e24.
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def is_prime(n: int) -> bool:
    """Exact primality for any n below 3.3e24 (Miller-Rabin with fixed witnesses)."""
    if n < 2:
        return False
    for q in _WITNESSES:
        if n % q == 0:
            return n == q
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def magic_prime(n_chunks: int) -> int:
    """The largest prime p < n_chunks with p % 3 == 2 (ValueError when there is none: n_chunks <= 2)."""
    for p in range(n_chunks - 1, 1, -1):
        if p % 3 == 2 and is_prime(p):
            return p
    raise ValueError(
        f"magic_prime: {n_chunks} chunk(s) is too few: need at least 3 windows of ctx_len + 1 tokens "
        "(more data or a shorter ctx_len)"
    )


def golden_factor(p: int) -> int:
    """floor(p (sqrt(5) - 1) / 2), exactly: floor((sqrt(5 p^2) - p) / 2) = (isqrt(5 p^2) - p) // 2."""
    return (math.isqrt(5 * p * p) - p) // 2


PASS_ORDERS = ("vary", "repeat")
"""How passes after the first order their samples: a new order each pass, or the first one again."""


class MagicPrimeOrder:
    """Start token of a dataset's k-th sample of ctx_len + 1 tokens, for a stream of num_tokens.
    `offset`: the k-th sample is sample number k + offset of the order (RWKV-LM: 1); `pass_order`:
    vary (each pass in a new order) or repeat (every pass in the first pass's order, as RWKV-LM)."""

    def __init__(self, num_tokens: int, ctx_len: int, offset: int = 0, pass_order: str = "vary") -> None:
        if ctx_len < 1:
            raise ValueError(f"ctx_len must be positive, got {ctx_len}")
        if offset < 0:
            raise ValueError(f"sample offset must be >= 0, got {offset}")
        if pass_order not in PASS_ORDERS:
            raise ValueError(f"pass_order must be one of {PASS_ORDERS}, got {pass_order!r}")
        self.num_tokens, self.ctx_len = num_tokens, ctx_len
        self.offset, self.repeat = offset, pass_order == "repeat"
        self.n_chunks = max(0, (num_tokens - 1) // ctx_len)
        try:
            self.p = magic_prime(self.n_chunks)
        except ValueError as e:
            raise ValueError(f"{num_tokens} tokens at ctx_len {ctx_len}: {e}") from None
        self.f = golden_factor(self.p)

    @property
    def coverage(self) -> float:
        """Fraction of the chunks an epoch visits (p / n_chunks)."""
        return self.p / self.n_chunks

    def chunk(self, k: int) -> int:
        """Chunk of the k-th sample (k >= 0): with n = k + offset, epoch e = n // p, i = n % p,
        (m_e f i^3) mod p (m_e = 1 in every epoch with pass_order repeat)."""
        if k < 0:
            raise ValueError(f"sample number must be >= 0, got {k}")
        p = self.p
        e, i = divmod(k + self.offset, p)
        m = 1 if self.repeat else e % (p - 1) + 1
        return m * self.f % p * pow(i, 3, p) % p

    def start(self, k: int) -> int:
        """First token of the k-th sample; it reads tokens [start, start + ctx_len + 1)."""
        return self.chunk(k) * self.ctx_len


class StepSampler(Sampler[int]):
    """Global sample numbers of one rank, step after step; usable as a DataLoader `sampler`.

    Step s yields s G + r + j W for j = 0 .. G / W - 1 (G = global_batch, W = world_size, r = rank),
    so a DataLoader with batch_size = micro-batch (a divisor of G / W) makes G / W / micro_batch
    micro-batches per step. `num_steps` ends the iteration after step num_steps - 1 (None: never).
    `step` is the next step a new iterator starts at; it advances as steps are yielded, and
    `state_dict()` / `load_state_dict()` save and restore it. A DataLoader prefetches ahead of the
    optimizer, so on resume restore the step the optimizer completed (e.g.
    `load_state_dict({"step": global_step})`), not the sampler's own position.
    """

    def __init__(
        self,
        global_batch: int,
        rank: int,
        world_size: int,
        start_step: int = 0,
        num_steps: int | None = None,
    ) -> None:
        if global_batch < 1 or world_size < 1:
            raise ValueError(f"global_batch and world_size must be >= 1, got {global_batch}, {world_size}")
        if global_batch % world_size:
            raise ValueError(
                f"global_batch {global_batch} is not divisible by world_size {world_size}: every rank must "
                "take the same number of samples per step"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if start_step < 0 or (num_steps is not None and num_steps < start_step):
            raise ValueError(f"need 0 <= start_step <= num_steps, got {start_step}, {num_steps}")
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.per_rank = global_batch // world_size
        self.num_steps = num_steps
        self.step = self._begin = start_step

    def indices(self, step: int) -> range:
        """This rank's global sample numbers at `step`."""
        base = step * self.global_batch + self.rank
        return range(base, base + self.per_rank * self.world_size, self.world_size)

    def __iter__(self) -> Iterator[int]:
        self._begin = self.step
        return self._steps()

    def _steps(self) -> Iterator[int]:
        while self.num_steps is None or self.step < self.num_steps:
            step = self.step
            self.step += 1
            yield from self.indices(step)

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("StepSampler without num_steps is infinite")
        return (self.num_steps - self._begin) * self.per_rank

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "global_batch": self.global_batch, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step. The world size may differ; the global batch must not."""
        if state.get("global_batch", self.global_batch) != self.global_batch:
            raise ValueError(
                f"checkpoint global_batch {state['global_batch']} != {self.global_batch}: resuming with another "
                "global batch would change which samples make each step"
            )
        self.step = self._begin = int(state["step"])
