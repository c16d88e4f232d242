"""Shared fixtures: a fixed seed per test, a small binidx corpus, and the `gpu` / `multigpu`
markers skipped without CUDA devices."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    n_gpu = torch.cuda.device_count()
    for item in items:
        if "gpu" in item.keywords and n_gpu < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "multigpu" in item.keywords and n_gpu < 2:
            item.add_marker(pytest.mark.skip(reason="needs two CUDA devices"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """About 100 k byte tokens of the standard library's source, as a binidx prefix."""
    from skein.data.prepare import prepare

    out = tmp_path_factory.mktemp("corpus") / "stdlib"
    prepare(output=str(out), tokenizer="byte", stdlib_max_bytes=300_000, progress=False)
    return str(out)
