"""What every architecture must do: one pass == segments with the state carried == one token at a
time; the chunked op and the token loop give the same model (logits and gradients); a tiny model
memorises a batch; gradients stop at a detached state."""

from __future__ import annotations

import pytest

from skein.rwkv import build_model
from tests.models.harness import (
    TINY,
    check_backends_agree,
    check_overfits,
    check_segmented_and_stepwise,
    check_truncated_bptt,
    perturb_parameters,
)

RECURRENT = sorted(name for name, cfg in TINY.items() if cfg["arch"] != "llama")


@pytest.mark.parametrize("name", sorted(TINY))
def test_segmented_and_stepwise_match_parallel(name: str) -> None:
    model = build_model(TINY[name])
    perturb_parameters(model)
    check_segmented_and_stepwise(model)


@pytest.mark.parametrize("name", RECURRENT)
def test_parallel_and_naive_backends_agree(name: str) -> None:
    check_backends_agree(TINY[name])


@pytest.mark.parametrize("name", sorted(TINY))
def test_overfits_small_batch(name: str) -> None:
    check_overfits(build_model(TINY[name]))


@pytest.mark.parametrize("name", sorted(TINY))
def test_truncated_bptt(name: str) -> None:
    check_truncated_bptt(build_model(TINY[name]))
