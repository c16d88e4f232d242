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
