"""MQAR generator: the Zoology layout and label rules, seeding, and disjoint train/test sets."""

from __future__ import annotations

import pytest
import torch

from skein.data.mqar import IGNORE, MQARSetting, mqar_examples, mqar_splits


@pytest.mark.parametrize("seq_len,kv", [(64, 4), (128, 8), (256, 16), (512, 64)])
def test_layout_and_labels(seq_len: int, kv: int) -> None:
    s = MQARSetting(seq_len, kv)
    x, y = mqar_examples(s, 300, seed=3)
    assert x.shape == y.shape == (300, seq_len)
    half = s.vocab_size // 2
    for xi, yi in zip(x, y):
        keys, values = xi[0 : 2 * kv : 2], xi[1 : 2 * kv : 2]
        assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < s.vocab_size)).all()
        assert len(set(keys.tolist())) == kv and len(set(values.tolist())) == kv
        answer = dict(zip(keys.tolist(), values.tolist()))
        assert (yi[: 2 * kv] == IGNORE).all()  # no label inside the context
        labelled = (yi != IGNORE).nonzero().flatten()
        assert len(labelled) == kv  # every key queried exactly once, nothing else scored
        for t in labelled.tolist():
            assert (t - 2 * kv) % 2 == 0  # queries sit at even offsets after the context
            assert yi[t].item() == answer[xi[t].item()]
        query = xi[2 * kv :]
        others = torch.ones_like(query, dtype=torch.bool)
        others[labelled - 2 * kv] = False
        assert (query[others] == 0).all()
        assert sorted(query[~others].tolist()) == sorted(keys.tolist())


def test_gaps_follow_the_power_law() -> None:
    """Short gaps are far more common than long ones (p(g) ~ g^-0.99)."""
    s = MQARSetting(256, 4, vocab_size=64)
    _, y = mqar_examples(s, 2000, seed=0)
    pos = (y != IGNORE).nonzero()[:, 1] - 2 * s.num_kv_pairs
    gaps = pos // 2
    assert (gaps < 8).float().mean() > 0.4
    assert (gaps >= 64).float().mean() < 0.25
    assert gaps.max() >= 64  # the tail is reached


def test_seeds() -> None:
    s = MQARSetting(64, 4)
    a, b, c = (mqar_examples(s, 50, seed) for seed in (1, 1, 2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_no_test_example_seen_in_training() -> None:
    """A tiny vocabulary makes repeats common: the split must still keep test inputs unseen."""
    s = MQARSetting(8, 2, vocab_size=12)
    (xtr, _), (xte, yte) = mqar_splits(s, 300, 50, seed=0)
    raw, _ = mqar_examples(s, 50, seed=1_000_003)
    train_rows = {tuple(r.tolist()) for r in xtr}
    assert any(tuple(r.tolist()) in train_rows for r in raw)  # overlap would happen without the filter
    assert len(xte) == 50 and (yte != IGNORE).sum() == 50 * 2
    assert not any(tuple(r.tolist()) in train_rows for r in xte)
    assert len({tuple(r.tolist()) for r in xte}) == 50


def test_bad_setting() -> None:
    with pytest.raises(ValueError, match="no room for 64 queries"):
        MQARSetting(200, 64)
