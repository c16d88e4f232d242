"""Fixtures for the training tests: a small binidx corpus."""

from __future__ import annotations

import pytest

from skein.data.prepare import prepare


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """About 300 k byte tokens of the standard library's source."""
    out = tmp_path_factory.mktemp("corpus") / "stdlib"
    prepare(output=str(out), tokenizer="byte", stdlib_max_bytes=300_000, progress=False)
    return str(out)
