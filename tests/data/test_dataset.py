"""PretrainDataset: windows, shard streams, weighted mixing realised exactly, O(1) counters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skein.data.binidx import BinIdxDataset, BinIdxWriter
from skein.data.dataset import (
    MixingSchedule,
    PretrainDataset,
    TokenStream,
    block_permutation,
    largest_remainder,
    splitmix64,
)
from skein.data.sampler import MagicPrimeOrder


def write(prefix: Path, tokens: np.ndarray, doc_len: int = 97) -> BinIdxDataset:
    with BinIdxWriter(prefix, np.uint16) as w:
        for s in range(0, len(tokens), doc_len):
            w.add_document(tokens[s : s + doc_len])
    return BinIdxDataset(prefix)


def test_largest_remainder() -> None:
    assert largest_remainder([0.5, 0.3, 0.2], 10) == [5, 3, 2]
    assert largest_remainder([1, 1, 1], 100) == [34, 33, 33]
    assert largest_remainder([2.0, 1.0], 1000) == [667, 333]
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.random(int(rng.integers(1, 7)))
        c = largest_remainder(w.tolist(), 997)
        assert sum(c) == 997 and all(abs(ci - wi / w.sum() * 997) < 1 for ci, wi in zip(c, w))
    with pytest.raises(ValueError, match="weights must be finite"):
        largest_remainder([0.0, 0.0], 10)
    with pytest.raises(ValueError, match="weights must be finite"):
        largest_remainder([1.0, -1.0], 10)


def test_block_permutation() -> None:
    p = block_permutation(7, 3, 500)
    assert sorted(p) == list(range(500)) and p == block_permutation(7, 3, 500)
    assert p != block_permutation(7, 4, 500) and p != block_permutation(8, 3, 500)
    assert block_permutation(0, 0, 10) == [4, 8, 6, 7, 2, 0, 5, 3, 9, 1], "the mixing order must not drift"


def test_splitmix64_reference_outputs() -> None:
    # First outputs of Vigna's splitmix64.c from state 0: the state advances by the golden gamma.
    gamma = 0x9E3779B97F4A7C15
    want = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [splitmix64(i * gamma % 2**64) for i in range(3)] == want


def test_mixing_counts_exact_per_block_and_counters_match_a_walk() -> None:
    weights = [0.55, 0.3, 0.1, 0.05]
    sched = MixingSchedule(weights, block=200, seed=5)
    assert sched.counts == [110, 60, 20, 10]
    n_blocks = 12
    located = [sched.locate(n) for n in range(200 * n_blocks)]
    counters = [0] * 4
    for d, k in located:
        assert k == counters[d], "per-source counter must equal a walk over all earlier samples"
        counters[d] += 1
    assert counters == [c * n_blocks for c in sched.counts]
    for b in range(n_blocks):
        in_block = [d for d, _ in located[b * 200 : (b + 1) * 200]]
        assert [in_block.count(d) for d in range(4)] == sched.counts
    fresh = MixingSchedule(weights, block=200, seed=5)
    for n in [2399, 17, 1000, 5, 2398]:
        assert fresh.locate(n) == located[n], "random access must agree with sequential access"
    other = [MixingSchedule(weights, block=200, seed=6).locate(n)[0] for n in range(200)]
    assert other != [d for d, _ in located[:200]]


def test_mixing_starved_source() -> None:
    with pytest.raises(ValueError, match=r"sources \[1\] have weight > 0 but no slot in a block of 10"):
        MixingSchedule([0.99, 0.01], block=10, seed=0)


def test_windows_follow_the_magic_prime_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    toks = rng.integers(1, 60_000, size=5_000)
    src = write(tmp_path / "a", toks)
    ds = PretrainDataset([src], None, ctx_len=64)
    order = MagicPrimeOrder(5_000, 64)
    assert len(ds) == order.p
    for n in [0, 1, 2, 50, order.p - 1, order.p, 3 * order.p + 7]:
        x, y = ds[n]
        s = order.start(n)
        assert x.dtype == torch.int64 and x.shape == (64,) and y.shape == (64,)
        assert x.tolist() == toks[s : s + 64].tolist() and y.tolist() == toks[s + 1 : s + 65].tolist()


def test_sample_offset_and_repeat_reach_the_windows(tmp_path: Path) -> None:
    """data.sample_offset 1 with pass_order repeat: sample n reads RWKV-LM's window of ii = n + 1."""
    rng = np.random.default_rng(4)
    toks = rng.integers(1, 60_000, size=7_000)
    ds = PretrainDataset(
        [write(tmp_path / "a", toks)], None, ctx_len=64, sample_offset=1, pass_order="repeat"
    )
    p = ds.orders[0].p
    factor = int(p * (5**0.5 - 1) / 2)
    for n in [0, 1, 9, p - 2, p - 1, p, 2 * p + 3]:
        s = (factor * (n + 1) ** 3 % p) * 64
        x, y = ds[n]
        assert x.tolist() == toks[s : s + 64].tolist() and y.tolist() == toks[s + 1 : s + 65].tolist()


def test_shards_read_as_one_stream(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    toks = rng.integers(1, 60_000, size=3_000)
    parts = [
        write(tmp_path / f"s_{i:05d}", toks[a:b])
        for i, (a, b) in enumerate([(0, 1000), (1000, 1013), (1013, 3000)])
    ]
    stream = TokenStream(parts, "s")
    for start, length in [(0, 3000), (990, 40), (1000, 13), (1012, 2), (2999, 1), (500, 2000)]:
        assert stream.get(start, length).tolist() == toks[start : start + length].tolist()
    by_prefix = PretrainDataset([tmp_path / "s"], None, ctx_len=50)
    whole = PretrainDataset([write(tmp_path / "w", toks)], None, ctx_len=50)
    for n in range(0, 120, 7):
        assert torch.equal(by_prefix[n][0], whole[n][0]) and torch.equal(by_prefix[n][1], whole[n][1])
    with pytest.raises(IndexError, match="out of 3000"):
        stream.get(2990, 11)


def test_weighted_mixing_realised(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    # Disjoint token ranges tell the sources apart.
    big = write(tmp_path / "big", rng.integers(1, 1000, size=40_000))
    small = write(tmp_path / "small", rng.integers(1000, 2000, size=900))
    ds = PretrainDataset([big, small], [0.8, 0.2], ctx_len=16, seed=11, mix_block=100)
    from_small = [int(ds[n][0][0] >= 1000) for n in range(3_000)]
    assert sum(from_small) == 600, "20% over whole blocks, exactly"
    windows = [sum(from_small[s : s + 250]) / 250 for s in range(0, 2750, 50)]
    assert all(abs(w - 0.2) < 0.06 for w in windows)
    p_small = ds.orders[1].p
    ks = [ds.locate(n)[1] for n in range(3_000) if ds.locate(n)[0] == 1]
    assert ks == list(range(600)) and 600 > p_small, "the small source wraps into new epochs"
    epoch0 = sorted(
        ds.locate(n)[2] for n in range(3_000) if ds.locate(n)[0] == 1 and ds.locate(n)[1] < p_small
    )
    assert epoch0 == [c * 16 for c in range(p_small)]


def test_default_weights_follow_token_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    a = write(tmp_path / "a", rng.integers(1, 100, size=3_000))
    b = write(tmp_path / "b", rng.integers(1, 100, size=1_000))
    ds = PretrainDataset([a, b], None, ctx_len=8)
    assert ds.schedule.counts == [750, 250]
    with pytest.raises(ValueError, match="1 weights for 2 sources"):
        PretrainDataset([a, b], [1.0], ctx_len=8)
    with pytest.raises(ValueError, match=r"b: 1000 tokens at ctx_len 600: .* too few"):
        PretrainDataset([a, b], None, ctx_len=600)


def test_check_vocab_without_meta_scans(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    toks = rng.integers(1, 500, size=2_000)
    toks[1234] = 777
    ds = PretrainDataset([write(tmp_path / "v", toks)], None, ctx_len=32)
    assert ds.metas() == [None]
    ds.check_vocab(778)
    with pytest.raises(ValueError, match=r"v\.bin: token id 777 >= vocab_size 700"):
        ds.check_vocab(700)
