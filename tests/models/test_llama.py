"""The transformer baseline: KV-cache generation equals the parallel pass; it learns."""

from __future__ import annotations

from skein.rwkv import build_model
from tests.models.harness import check_overfits, check_segmented_and_stepwise, perturb_parameters

TINY = {"arch": "llama", "vocab_size": 97, "n_layer": 2, "d_model": 64, "n_head": 4, "n_kv_head": 2}


def test_segmented_and_stepwise_match_parallel() -> None:
    model = build_model(TINY)
    perturb_parameters(model)
    check_segmented_and_stepwise(model)


def test_overfits_small_batch() -> None:
    check_overfits(build_model(TINY))


def test_gqa_config_validation() -> None:
    import pytest

    with pytest.raises(ValueError, match="n_kv_head"):
        build_model({**TINY, "n_kv_head": 3})
