"""Multi-query associative recall (MQAR) examples, following the Zoology recipe.

An example of length seq_len starts with num_kv_pairs (key, value) pairs, keys drawn without
replacement from ids 1 .. vocab/2 - 1 and values without replacement from vocab/2 .. vocab - 1.
The rest of the sequence is zeros, except that each key reappears once, at offset 2 * gap after
the context, with gaps drawn without replacement from 0 .. space - 1 (space = (seq_len - 2 kv) / 2)
with probability proportional to a * g^(a - 1), g = gap + 1. The label (next-token target) at the
position of a queried key is its value; every other label is -100 (ignored).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -100
"""Label of the positions that are not scored."""


@dataclass(frozen=True)
class MQARSetting:
    """One MQAR task size."""

    seq_len: int
    num_kv_pairs: int
    vocab_size: int = 8192
    power_a: float = 0.01

    def __post_init__(self) -> None:
        if self.num_kv_pairs < 1:
            raise ValueError(f"num_kv_pairs must be >= 1, got {self.num_kv_pairs}")
        if (self.seq_len - 2 * self.num_kv_pairs) // 2 < self.num_kv_pairs:
            raise ValueError(
                f"seq_len={self.seq_len} leaves no room for {self.num_kv_pairs} queries after "
                f"{self.num_kv_pairs} pairs (needs seq_len >= {4 * self.num_kv_pairs})"
            )
        if self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise ValueError(
                f"vocab_size={self.vocab_size} has fewer than {self.num_kv_pairs} keys in its first half"
            )
        if not 0 < self.power_a <= 1:
            raise ValueError(f"power_a must lie in (0, 1], got {self.power_a}")


def _sample_without_replacement(weights: Tensor, n: int, k: int, gen: torch.Generator) -> Tensor:
    """[n, k] indices drawn without replacement from a weighted range (Gumbel top-k, the same
    distribution as drawing one at a time and renormalising)."""
    u = torch.rand(n, weights.numel(), generator=gen, dtype=torch.float64).clamp_min(1e-300)
    return (weights.log() - (-u.log()).log()).topk(k, dim=1).indices


def mqar_examples(setting: MQARSetting, num_examples: int, seed: int) -> tuple[Tensor, Tensor]:
    """(inputs, labels), int64 [num_examples, seq_len]; the same seed gives the same examples."""
    s = setting
    gen = torch.Generator().manual_seed(seed)
    kv, half = s.num_kv_pairs, s.vocab_size // 2
    space = (s.seq_len - 2 * kv) // 2
    uniform_keys, uniform_values = torch.ones(half - 1), torch.ones(s.vocab_size - half)
    g = torch.arange(1, space + 1, dtype=torch.float64)
    gap_weights = s.power_a * g ** (s.power_a - 1)
    inputs = torch.zeros(num_examples, s.seq_len + 1, dtype=torch.long)
    labels = torch.full((num_examples, s.seq_len + 1), IGNORE, dtype=torch.long)
    rows = torch.arange(num_examples)[:, None]
    for start in range(0, num_examples, 1024):  # bounded memory for the [n, vocab/2] draws
        n = min(1024, num_examples - start)
        r = rows[start : start + n]
        keys = 1 + _sample_without_replacement(uniform_keys, n, kv, gen)
        values = half + _sample_without_replacement(uniform_values, n, kv, gen)
        gaps = _sample_without_replacement(gap_weights, n, kv, gen)
        inputs[r, 2 * torch.arange(kv)] = keys
        inputs[r, 2 * torch.arange(kv) + 1] = values
        inputs[r, 2 * kv + 2 * gaps] = keys
        labels[r, 2 * kv + 2 * gaps + 1] = values
    return inputs[:, :-1].contiguous(), labels[:, 1:].contiguous()


def _row_hashes(x: Tensor) -> list[bytes]:
    return [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in x]


def mqar_splits(
    setting: MQARSetting, num_train: int, num_test: int, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Train and test sets from different seeds; test examples whose inputs equal a train
    example's are replaced by fresh ones, so no test input was seen in training."""
    train = mqar_examples(setting, num_train, seed)
    seen = set(_row_hashes(train[0]))
    kept_x, kept_y, have, draw = [], [], 0, 0
    while have < num_test:
        draw += 1
        if draw > 100:
            raise ValueError(f"{setting}: cannot find {num_test} test examples unseen in training")
        x, y = mqar_examples(setting, num_test, seed + 1_000_003 * draw)
        fresh = [i for i, h in enumerate(_row_hashes(x)) if h not in seen]
        seen.update(_row_hashes(x[fresh]))
        kept_x.append(x[fresh])
        kept_y.append(y[fresh])
        have += len(fresh)
    return train, (torch.cat(kept_x)[:num_test], torch.cat(kept_y)[:num_test])
