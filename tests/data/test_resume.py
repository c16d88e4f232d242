"""Exact resume: a run stopped at step k and resumed on 1, 2 or 4 ranks sees the same samples and
tokens per step as an uninterrupted run on 2 ranks; nothing repeats, nothing is skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from skein.data.binidx import BinIdxWriter
from skein.data.dataset import PretrainDataset
from skein.data.sampler import StepSampler

G, N_STEPS, STOP = 16, 9, 4


class WithIndex(Dataset):
    def __init__(self, ds: PretrainDataset) -> None:
        self.ds = ds

    def __getitem__(self, n: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        return (n, *self.ds[n])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> PretrainDataset:
    root = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(9)
    prefixes = []
    for name, n_tokens in [("web", 30_000), ("code", 4_000)]:
        with BinIdxWriter(root / name, np.uint16) as w:
            tokens = rng.integers(1, 50_000, size=n_tokens)
            for s in range(0, n_tokens, 211):
                w.add_document(tokens[s : s + 211])
        prefixes.append(str(root / name))
    return PretrainDataset(prefixes, [0.7, 0.3], ctx_len=32, seed=3, mix_block=64)


def run_rank(
    ds: PretrainDataset, sampler: StepSampler, micro: int, steps: int, workers: int = 0
) -> dict[int, list[tuple[int, torch.Tensor]]]:
    """step -> [(sample id, x)] this rank saw, for `steps` optimizer steps from sampler.step."""
    per_step = sampler.per_rank // micro
    first = sampler.step
    loader = DataLoader(WithIndex(ds), batch_size=micro, sampler=sampler, num_workers=workers)
    seen: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for b, (ids, x, y) in enumerate(loader):
        assert torch.equal(x[:, 1:], y[:, :-1])
        seen.setdefault(first + b // per_step, []).extend(zip(ids.tolist(), x))
        if b + 1 == steps * per_step:
            break
    return seen


def run(ds: PretrainDataset, world: int, accum: int, start: int, steps: int, workers: int = 0) -> dict:
    """Union over ranks: step -> {sample id: x}."""
    micro = G // world // accum
    out: dict[int, dict[int, torch.Tensor]] = {}
    for rank in range(world):
        sampler = StepSampler(G, rank, world)
        sampler.load_state_dict({"step": start, "global_batch": G, "world_size": 2})
        for step, pairs in run_rank(ds, sampler, micro, steps, workers).items():
            for n, x in pairs:
                assert n not in out.setdefault(step, {}), f"sample {n} twice in step {step}"
                out[step][n] = x
    return out


def test_stop_and_resume_on_other_world_sizes(dataset: PretrainDataset) -> None:
    full = run(dataset, world=2, accum=2, start=0, steps=N_STEPS)
    assert sorted(full) == list(range(N_STEPS))
    every = sorted(n for step in full.values() for n in step)
    assert every == list(range(N_STEPS * G)), "no sample repeated, none skipped"

    sampler = StepSampler(G, 0, 2)
    run_rank(dataset, sampler, micro=4, steps=STOP)
    state = sampler.state_dict()
    assert state["step"] == STOP, "without prefetching workers the sampler stops exactly at the step"

    before = run(dataset, world=2, accum=2, start=0, steps=STOP)
    for world, accum, workers in [(1, 4, 0), (2, 1, 0), (4, 2, 2)]:
        after = run(
            dataset, world=world, accum=accum, start=state["step"], steps=N_STEPS - STOP, workers=workers
        )
        resumed = {**before, **after}
        assert sorted(resumed) == list(range(N_STEPS))
        for step in range(N_STEPS):
            assert sorted(resumed[step]) == sorted(full[step]) == list(range(step * G, (step + 1) * G))
            for n, x in full[step].items():
                assert torch.equal(resumed[step][n], x), f"world {world}: sample {n} has other tokens"


def test_determinism_given_seed_step_rank_world(dataset: PretrainDataset) -> None:
    again = PretrainDataset([s.name for s in dataset.streams], [0.7, 0.3], ctx_len=32, seed=3, mix_block=64)
    other_seed = PretrainDataset(
        [s.name for s in dataset.streams], [0.7, 0.3], ctx_len=32, seed=4, mix_block=64
    )
    sampler_ids = list(StepSampler(G, 1, 4, start_step=5, num_steps=7))
    assert sampler_ids == list(StepSampler(G, 1, 4, start_step=5, num_steps=7))
    a = [dataset[n][0] for n in sampler_ids]
    b = [again[n][0] for n in sampler_ids]
    c = [other_seed[n][0] for n in sampler_ids]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c)), "another seed must mix differently"
