"""Magic-prime order and StepSampler: primes, permutations, epochs, step/rank layout, state."""

from __future__ import annotations

import itertools
import math
import random
from decimal import Decimal, getcontext

import pytest
import torch
from torch.utils.data import DataLoader

from skein.data.sampler import MagicPrimeOrder, StepSampler, golden_factor, is_prime, magic_prime


def sieve(n: int) -> list[bool]:
    flags = [True] * (n + 1)
    flags[0] = flags[1] = False
    for i in range(2, math.isqrt(n) + 1):
        if flags[i]:
            flags[i * i :: i] = [False] * len(flags[i * i :: i])
    return flags


def test_is_prime_against_sieve_and_known_values() -> None:
    flags = sieve(20_000)
    assert [n for n in range(20_001) if is_prime(n)] == [n for n in range(20_001) if flags[n]]
    assert is_prime(2**61 - 1) and is_prime(1_000_000_007)
    assert not is_prime(3_215_031_751)  # strong pseudoprime to bases 2, 3, 5, 7
    assert not is_prime((2**31 - 1) * (2**61 - 1))


def test_magic_prime_is_the_largest_qualifying_prime() -> None:
    flags = sieve(5_000)
    for n in range(3, 5_000):
        want = max(p for p in range(2, n) if flags[p] and p % 3 == 2)
        assert magic_prime(n) == want, n
    for n in (10**6 + 3, 123_456_789, 10**12 + 39):
        p = magic_prime(n)
        assert p < n and p % 3 == 2 and is_prime(p) and 0.9 < p / n <= 1
        assert not any(is_prime(q) and q % 3 == 2 for q in range(p + 1, n))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_magic_prime_too_small(n: int) -> None:
    with pytest.raises(ValueError, match=f"{n} chunk"):
        magic_prime(n)


def test_golden_factor_is_exact() -> None:
    getcontext().prec = 60
    phi = (Decimal(5).sqrt() - 1) / 2
    for p in [2, 5, 11, 17, 40_009, 2**31 - 1, 10**12 + 37, 10**18 + 3, 2**89 - 1]:
        assert golden_factor(p) == int(Decimal(p) * phi), p
    for p in [5, 11, 40_009, 2**31 - 1]:
        assert golden_factor(p) == int(p * (math.sqrt(5) - 1) / 2)  # RWKV-LM's float form agrees here


@pytest.mark.parametrize("num_tokens,ctx_len", [(1_000, 7), (65_537, 64), (300_001, 100), (9, 2)])
def test_one_epoch_visits_every_chunk_once(num_tokens: int, ctx_len: int) -> None:
    order = MagicPrimeOrder(num_tokens, ctx_len)
    p = order.p
    assert p == magic_prime((num_tokens - 1) // ctx_len)
    for epoch in range(3):
        chunks = [order.chunk(epoch * p + i) for i in range(p)]
        assert sorted(chunks) == list(range(p)), f"epoch {epoch} is not a permutation"
        assert max(order.start(k) for k in range(epoch * p, (epoch + 1) * p)) + ctx_len + 1 <= num_tokens
    if p > 5:
        e0 = [order.chunk(i) for i in range(p)]
        e1 = [order.chunk(p + i) for i in range(p)]
        assert e0 != e1, "a new epoch must visit the chunks in another order"


def test_epoch_zero_is_rwkv_lm_order() -> None:
    order = MagicPrimeOrder(num_tokens=51_200 * 33 + 5, ctx_len=33)
    p, factor = order.p, int(order.p * (math.sqrt(5) - 1) / 2)
    for ii in range(1, 500):
        assert order.start(ii) == (factor * ii * ii * ii % p) * 33


def rwkv_lm_start(ii: int, p: int, ctx_len: int) -> int:
    """RWKV-LM's src/dataset.py, as published: factor = int(p * (sqrt(5) - 1) / 2) in floats, the
    window of its sample ii starts at ((factor * ii^3) mod p) * ctx_len, for every ii."""
    factor = int(p * (math.sqrt(5) - 1) / 2)
    return (factor * ii * ii * ii % p) * ctx_len


def rwkv_lm_samples(step: int, micro_bsz: int, world_size: int, rank: int) -> list[int]:
    """RWKV-LM's sample numbers ii of one rank at one optimizer step: its DataLoader (no sampler
    replacement, no shuffle) gives each rank idx = step * micro_bsz + j of its mini-epoch of
    40320 / (micro_bsz * world_size) steps, and ii = 1 + epoch * 40320 + idx * world_size + rank."""
    epoch_steps = 40320 // (micro_bsz * world_size)
    epoch, local = divmod(step, epoch_steps)
    return [1 + epoch * 40320 + (local * micro_bsz + j) * world_size + rank for j in range(micro_bsz)]


@pytest.mark.parametrize("micro_bsz,world_size", [(16, 1), (4, 2), (8, 4)])
def test_offset_one_and_repeat_read_rwkv_lm_windows_step_by_step(micro_bsz: int, world_size: int) -> None:
    """skein's steps and ranks with data.sample_offset 1 and pass_order repeat read RWKV-LM's windows,
    over more than one pass and across its mini-epoch boundaries."""
    ctx_len = 37
    rng = random.Random(micro_bsz)
    num_tokens = ctx_len * rng.randrange(9_000, 12_000) + rng.randrange(ctx_len)
    order = MagicPrimeOrder(num_tokens, ctx_len, offset=1, pass_order="repeat")
    p, global_batch = order.p, micro_bsz * world_size
    steps = sorted(
        {
            *range(40),
            *(40320 // global_batch + d for d in (-1, 0, 1)),
            *(p // global_batch + d for d in range(-2, 3)),
        }
        | {rng.randrange(3 * p // global_batch) for _ in range(50)}
    )
    assert max(steps) * global_batch > 2 * p  # past the end of the second pass
    for rank in range(world_size):
        sampler = StepSampler(global_batch, rank, world_size)
        for step in steps:
            ours = [order.start(k) for k in sampler.indices(step)]
            theirs = [
                rwkv_lm_start(ii, p, ctx_len) for ii in rwkv_lm_samples(step, micro_bsz, world_size, rank)
            ]
            assert ours == theirs, f"step {step} rank {rank}"


def test_sample_offset_shifts_and_pass_order_vary_stays_a_permutation() -> None:
    base = MagicPrimeOrder(20_011, 19)
    shifted = MagicPrimeOrder(20_011, 19, offset=5)
    p = base.p
    assert [shifted.start(k) for k in range(3 * p)] == [base.start(k + 5) for k in range(3 * p)]
    repeat = MagicPrimeOrder(20_011, 19, pass_order="repeat")
    assert [repeat.chunk(p + i) for i in range(p)] == [repeat.chunk(i) for i in range(p)]
    assert [base.chunk(p + i) for i in range(p)] != [base.chunk(i) for i in range(p)]
    # offset 1: the first p samples are sample numbers 1..p, every chunk once
    assert sorted(MagicPrimeOrder(20_011, 19, offset=1).chunk(k) for k in range(p)) == list(range(p))
    with pytest.raises(ValueError, match="offset must be >= 0"):
        MagicPrimeOrder(20_011, 19, offset=-1)
    with pytest.raises(ValueError, match="pass_order must be one of"):
        MagicPrimeOrder(20_011, 19, pass_order="shuffle")


def test_too_small_dataset_error() -> None:
    with pytest.raises(ValueError, match="100 tokens at ctx_len 50: .* too few"):
        MagicPrimeOrder(100, 50)


def test_step_sampler_layout() -> None:
    s = StepSampler(global_batch=12, rank=1, world_size=4, start_step=3, num_steps=5)
    assert list(s) == [37, 41, 45, 49, 53, 57]
    assert s.step == 5 and len(s) == 6
    union = sorted(i for r in range(4) for i in StepSampler(12, r, 4, start_step=3, num_steps=4))
    assert union == list(range(36, 48))


def test_step_sampler_errors() -> None:
    with pytest.raises(ValueError, match="global_batch 10 is not divisible by world_size 4"):
        StepSampler(10, 0, 4)
    with pytest.raises(ValueError, match=r"rank 4 is not in \[0, 4\)"):
        StepSampler(8, 4, 4)
    with pytest.raises(TypeError, match="infinite"):
        len(StepSampler(8, 0, 2))
    s = StepSampler(8, 0, 2)
    with pytest.raises(ValueError, match="global_batch 16 != 8"):
        s.load_state_dict({"step": 3, "global_batch": 16, "world_size": 2})


def test_step_sampler_infinite_and_state() -> None:
    s = StepSampler(8, 1, 2, start_step=2)
    it = iter(s)
    got = [next(it) for _ in range(12)]
    assert got == [17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39]
    state = s.state_dict()
    assert state == {"step": 5, "global_batch": 8, "world_size": 2}
    t = StepSampler(8, 0, 4)
    t.load_state_dict({"step": 7, "global_batch": 8, "world_size": 2})
    assert list(itertools.islice(t, 2)) == [56, 60]


def test_step_sampler_with_dataloader_microbatches() -> None:
    g, ws, micro = 24, 3, 4
    ids = torch.arange(10_000)
    for rank in range(ws):
        loader = DataLoader(ids, batch_size=micro, sampler=StepSampler(g, rank, ws, num_steps=4))
        batches = [b.tolist() for b in loader]
        assert len(batches) == 4 * g // ws // micro
        per_step = g // ws // micro
        for step in range(4):
            got = [i for b in batches[step * per_step : (step + 1) * per_step] for i in b]
            assert got == list(range(step * g + rank, (step + 1) * g, ws))


def test_sampler_is_a_function_of_its_arguments() -> None:
    rng = random.Random(0)
    for _ in range(20):
        ws = rng.choice([1, 2, 4, 8])
        g = ws * rng.randint(1, 6)
        rank, step = rng.randrange(ws), rng.randrange(1000)
        a = list(StepSampler(g, rank, ws, start_step=step, num_steps=step + 2))
        b = list(StepSampler(g, rank, ws, start_step=step, num_steps=step + 2))
        assert a == b == [x for s in (step, step + 1) for x in range(s * g + rank, (s + 1) * g, ws)]
