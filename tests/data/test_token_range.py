"""Token range per shard: an .idx whose dtype code has the wrong signedness (int16 on uint16 data)
is refused before training with the shard and the dtype code named; the range is measured once,
kept in `<prefix>.range.json`, and measured again when the shard changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skein.data import token_range
from skein.data.binidx import BinIdxDataset, BinIdxError, BinIdxWriter
from skein.data.token_range import RANGE_SUFFIX, check_token_range, scan_range
from skein.train.config import ConfigError, load_config
from skein.train.loop.data_module import check_vocab
from skein.train.loop.run import train_from_config
from tests.train.helpers import tiny_run, write_config


def _write(prefix: Path, docs: list[np.ndarray], dtype: type) -> None:
    with BinIdxWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)


def _set_dtype_code(prefix: Path, code: int) -> None:
    with open(str(prefix) + ".idx", "r+b") as f:
        f.seek(17)  # 9-byte magic, 8-byte version, then the dtype code
        f.write(bytes([code]))


def _uint16_docs(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50_000, size=int(rng.integers(50, 400))).astype(np.uint16) for _ in range(40)]


def test_wrong_signedness_is_refused_naming_shard_and_code(tmp_path: Path) -> None:
    docs = _uint16_docs(0)
    flat = np.concatenate(docs)
    assert flat.max() > 32767
    prefix = tmp_path / "world_00000"
    _write(prefix, docs, np.uint16)
    _set_dtype_code(prefix, 3)  # int16: same width, wrong signedness
    ds = BinIdxDataset(prefix)  # opens: the sizes and pointers are all consistent
    assert ds.dtype == np.int16
    with pytest.raises(BinIdxError) as e:
        check_token_range(ds, 65_536)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{prefix}.bin: negative token id {int(flat.astype(np.int16).min())}" in msg
    assert "dtype code 3 (int16)" in msg and f"set byte 17 of {prefix}.idx to 8 (uint16)" in msg

    _set_dtype_code(prefix, 8)  # the fix the message gives: the recorded range is measured again
    fixed = BinIdxDataset(prefix)
    assert check_token_range(fixed, 65_536) == (int(flat.min()), int(flat.max()))
    with pytest.raises(BinIdxError, match=rf"token id {int(flat.max())} >= vocab_size 49000 \(dtype code 8"):
        check_token_range(fixed, 49_000)


def test_training_refuses_the_shard_before_anything_is_written(tmp_path: Path) -> None:
    prefix = tmp_path / "data" / "corpus"
    _write(prefix, _uint16_docs(1), np.uint16)
    _set_dtype_code(prefix, 3)
    run_dir = tmp_path / "run"
    model = {"arch": "llama", "vocab_size": 50_000, "n_layer": 1, "d_model": 32, "n_head": 2}
    d = tiny_run(str(prefix), run_dir, model=model, data={"tokenizer": None})
    cfg = load_config(write_config(d, tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match=rf"{prefix}\.bin: negative token id .*dtype code 3 \(int16\)"):
        check_vocab(cfg)
    with pytest.raises(ConfigError, match="dtype code 3"):
        train_from_config(cfg)
    assert not run_dir.exists()


def test_range_is_measured_once_and_again_when_the_shard_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    docs = [rng.integers(5, 900, size=300) for _ in range(7)]
    prefix = tmp_path / "s"
    _write(prefix, docs, np.uint16)
    flat = np.concatenate(docs)
    ds = BinIdxDataset(prefix)
    assert scan_range(ds, chunk=7) == scan_range(ds) == (int(flat.min()), int(flat.max()))
    assert token_range.token_range(ds) == (int(flat.min()), int(flat.max()))
    side = json.loads(Path(str(prefix) + RANGE_SUFFIX).read_text())
    assert side["min"] == int(flat.min()) and side["max"] == int(flat.max()) and side["dtype_code"] == 8
    assert side["bin_bytes"] == flat.size * 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    def no_scan(*a, **k):
        raise AssertionError("scanned although the sidecar is current")

    with monkeypatch.context() as m:
        m.setattr(token_range, "scan_range", no_scan)
        assert check_token_range(BinIdxDataset(prefix), 1000) == (int(flat.min()), int(flat.max()))

    # Same size, new content: the modification time differs, so the range is measured again.
    docs[3][0] = 999
    _write(prefix, docs, np.uint16)
    with pytest.raises(BinIdxError, match="token id 999 >= vocab_size 999"):
        check_token_range(BinIdxDataset(prefix), 999)

    # A damaged sidecar is measured again and replaced.
    Path(str(prefix) + RANGE_SUFFIX).write_text("{not json")
    assert token_range.token_range(BinIdxDataset(prefix)) == (int(flat.min()), 999)
    assert json.loads(Path(str(prefix) + RANGE_SUFFIX).read_text())["max"] == 999


def test_range_without_a_writable_folder_is_measured_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 255, size=100, dtype=np.int64) for _ in range(3)]
    prefix = tmp_path / "ro"
    _write(prefix, docs, np.uint8)

    def refuse(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(token_range.os, "replace", refuse)
    flat = np.concatenate(docs)
    assert token_range.token_range(BinIdxDataset(prefix)) == (int(flat.min()), int(flat.max()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro.bin", "ro.idx"]
