"""The synthetic-task trainer: a time budget cuts the planned steps, and scoring counts only
labelled positions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skein.train.eval.fit import CALIBRATION, IGNORE, FitConfig, accuracy, fit, score
from skein.train.typed import ConfigError


class _Lookup(nn.Module):
    """Predicts the next token from the current one alone."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 32)
        self.head = nn.Linear(32, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(idx))


def _task(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 16, (n, 8))
    y = (x * 5 + 3) % 16
    y[:, ::2] = IGNORE
    return x, y


def test_learns_and_scores_only_labelled_positions() -> None:
    model = _Lookup(16)
    test = _task(64)
    r = fit(model, _task(512), test, FitConfig(lr=3e-2, epochs=20, batch_size=64), torch.device("cpu"), 0,
            progress=False)  # fmt: skip
    assert r["accuracy"] > 0.95 and r["steps"] == r["planned_steps"] == 160
    # the final per-position counts are those of the trained model on the test set
    want = score(model, *test, 32, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(r["per_position"], want))
    assert r["accuracy"] == accuracy(*want)
    correct, counted = score(model, *_task(64), 32, torch.device("cpu"))
    assert counted[::2].sum() == 0 and (counted[1::2] == 64).all()
    assert (correct <= counted).all()


def test_no_epoch_or_batch_is_refused() -> None:
    for bad in ({"epochs": 0, "batch_size": 8}, {"epochs": 2, "batch_size": 0}):
        with pytest.raises(ConfigError, match="must be at least 1"):
            FitConfig(lr=1e-3, **bad)


def test_time_budget_cuts_the_steps() -> None:
    cfg = FitConfig(lr=1e-2, epochs=50, batch_size=16, max_seconds=1e-9)
    r = fit(_Lookup(16), _task(256), _task(32), cfg, torch.device("cpu"), 0, progress=False)
    assert r["planned_steps"] == 50 * 16
    assert r["steps"] == CALIBRATION[1] and r["epochs"] == 1
