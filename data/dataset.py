"""`PretrainDataset`: global sample number -> (x, y) windows, mixing several token sources.

`ds[n]` depends only on (sources, weights, ctx_len, seed, mix_block, n), so any rank can compute
any sample and a run resumes exactly from a step number (see `StepSampler`).

Mixing: the samples are cut into blocks of B = mix_block slots. Source d owns c_d slots of every
block, c_d = round(B w_d / sum(w)) by largest remainder (so sum(c_d) = B and the weights are met
exactly per block, up to the 1/B rounding). Within block b the slot pattern [0]*c_0 + [1]*c_1 + ...
is shuffled by a Fisher-Yates permutation driven by splitmix64(seed, b) (pure integer arithmetic,
the same on every platform and library version). Sample n = b B + s comes from source d = the
pattern's entry at slot s, and is that source's k-th sample with k = b c_d + (slots before s in
block b that also belong to d): O(B) work once per block, O(1) after that, never a walk over all
earlier samples. Each source then reads its k-th window in its own magic-prime order.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from skein.data.binidx import BinIdxDataset, read_meta, resolve_shards
from skein.data.sampler import MagicPrimeOrder

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """One step of the splitmix64 mixer (Steele et al. 2014): a bijection of 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def block_permutation(seed: int, block: int, size: int) -> list[int]:
    """A permutation of range(size) determined by (seed, block): Fisher-Yates with splitmix64."""
    perm = list(range(size))
    state = splitmix64(splitmix64(seed & MASK64) ^ (block & MASK64))
    for i in range(size - 1, 0, -1):
        state = splitmix64(state)
        j = (state * (i + 1)) >> 64  # uniform in [0, i] up to a bias below (i + 1) / 2^64
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to `total`, proportional to weights (Hamilton's method)."""
    w = [float(x) for x in weights]
    if not w or any(not np.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {list(weights)}")
    quotas = [x / sum(w) * total for x in w]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(w)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


class MixingSchedule:
    """Global sample number n -> (source d, that source's sample number k)."""

    def __init__(self, weights: Sequence[float], block: int, seed: int) -> None:
        if block < 1:
            raise ValueError(f"mix_block must be >= 1, got {block}")
        self.block, self.seed = block, seed
        self.counts = largest_remainder(weights, block)
        starved = [d for d, (w, c) in enumerate(zip(weights, self.counts)) if w > 0 and c == 0]
        if starved:
            raise ValueError(
                f"sources {starved} have weight > 0 but no slot in a block of {block}: raise mix_block "
                f"(weights {list(weights)})"
            )
        self.pattern = [d for d, c in enumerate(self.counts) for _ in range(c)]
        self._cache: dict[int, tuple[list[int], list[int]]] = {}

    def _layout(self, b: int) -> tuple[list[int], list[int]]:
        """Source of each slot of block b, and its rank among that source's slots in the block."""
        if b not in self._cache:
            if len(self._cache) >= 4:
                self._cache.clear()
            source = [self.pattern[j] for j in block_permutation(self.seed, b, self.block)]
            seen = [0] * len(self.counts)
            rank = []
            for d in source:
                rank.append(seen[d])
                seen[d] += 1
            self._cache[b] = (source, rank)
        return self._cache[b]

    def locate(self, n: int) -> tuple[int, int]:
        if n < 0:
            raise IndexError(f"sample number must be >= 0, got {n}")
        if len(self.counts) == 1:
            return 0, n
        b, s = divmod(n, self.block)
        source, rank = self._layout(b)
        d = source[s]
        return d, b * self.counts[d] + rank[s]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}


class TokenStream:
    """Several binidx pairs (the shards of one dataset) read as one flat token stream."""

    def __init__(self, parts: Sequence[BinIdxDataset], name: str) -> None:
        if not parts:
            raise ValueError(f"{name}: no shards")
        self.parts, self.name = list(parts), name
        self.starts = [0]
        for p in self.parts:
            self.starts.append(self.starts[-1] + p.num_tokens)
        self.num_tokens = self.starts[-1]

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64 [length] (a copy; may span shards)."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"{self.name}: tokens [{start}, {start + length}) out of {self.num_tokens}")
        out = np.empty(length, dtype=np.int64)
        i, done = bisect.bisect_right(self.starts, start) - 1, 0
        while done < length:
            part, offset = self.parts[i], start + done - self.starts[i]
            n = min(length - done, part.num_tokens - offset)
            out[done : done + n] = part.get(offset, n)
            done, i = done + n, i + 1
        return out


def open_source(source: BinIdxDataset | TokenStream | str | Path) -> TokenStream:
    """A TokenStream for a dataset, a prefix (its shards found by `resolve_shards`) or a stream."""
    if isinstance(source, TokenStream):
        return source
    if isinstance(source, BinIdxDataset):
        return TokenStream([source], source.prefix)
    return TokenStream([BinIdxDataset(p) for p in resolve_shards(source)], str(source))


class PretrainDataset(Dataset):
    """Map-style dataset: `ds[n]` for global sample number n = (x, y), int64 tensors [ctx_len], y = x
    shifted by one token. Every n >= 0 is valid (sources repeat in new magic-prime epochs);
    len(ds) is one epoch of every source (sum of their magic primes).

    Args:
        sources: BinIdxDatasets, TokenStreams, or path prefixes (a sharded `prepare` output prefix
            is read as one stream of all its shards).
        weights: sampling weight per source; None weighs each by its token count.
        ctx_len: tokens per sample (each reads ctx_len + 1).
        seed: seed of the per-block shuffle of the mixing pattern.
        mix_block: slots per mixing block (weights are realised exactly over each block).
        sample_offset: each source's k-th sample is sample k + sample_offset of its magic-prime
            order (RWKV-LM's first sample is 1).
        pass_order: "vary" (each pass over a source in a new order) or "repeat" (the first
            pass's order again, as RWKV-LM).
    """

    def __init__(
        self,
        sources: Sequence[BinIdxDataset | TokenStream | str | Path],
        weights: Sequence[float] | None,
        ctx_len: int,
        seed: int = 0,
        mix_block: int = 1000,
        sample_offset: int = 0,
        pass_order: str = "vary",
    ) -> None:
        if not sources:
            raise ValueError("PretrainDataset needs at least one source")
        self.streams = [open_source(s) for s in sources]
        if weights is None:
            weights = [float(s.num_tokens) for s in self.streams]
        if len(weights) != len(self.streams):
            raise ValueError(f"{len(weights)} weights for {len(self.streams)} sources")
        self.weights = [float(w) for w in weights]
        self.ctx_len, self.seed = ctx_len, seed
        self.orders = []
        for s in self.streams:
            try:
                self.orders.append(MagicPrimeOrder(s.num_tokens, ctx_len, sample_offset, pass_order))
            except ValueError as e:
                raise ValueError(f"{s.name}: {e}") from None
        self.schedule = MixingSchedule(self.weights, mix_block, seed)

    def __len__(self) -> int:
        return sum(o.p for o in self.orders)

    def locate(self, n: int) -> tuple[int, int, int]:
        """(source, that source's sample number, start token) of global sample n."""
        d, k = self.schedule.locate(n)
        return d, k, self.orders[d].start(k)

    def __getitem__(self, n: int) -> tuple[Tensor, Tensor]:
        d, _, start = self.locate(int(n))
        window = torch.from_numpy(self.streams[d].get(start, self.ctx_len + 1))
        return window[:-1], window[1:]

    def metas(self) -> list[dict[str, Any] | None]:
        """The `prepare` meta of each source (None where absent), read from its first shard."""
        return [read_meta(s.parts[0].prefix) for s in self.streams]

    def check_vocab(self, vocab_size: int) -> None:
        """Raise when a source's tokens do not fit a model with vocab_size ids: its meta file's
        tokenizer vocab_size when there is one, and every shard's token range (measured once per
        shard, then read from `<prefix>.range.json`)."""
        for stream, meta in zip(self.streams, self.metas()):
            if meta is not None and meta["vocab_size"] > vocab_size:
                raise ValueError(
                    f"{meta['meta_path']}: data tokenized with {meta['tokenizer']['spec']!r} "
                    f"(vocab_size {meta['vocab_size']}) but the model has vocab_size {vocab_size}"
                )
            for part in stream.parts:
                part.check_vocab(vocab_size)
