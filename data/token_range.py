"""The smallest and largest token id of a binidx shard, measured once and kept beside it.

An `.idx` whose dtype code has the right width but the wrong signedness (int16, code 3, on data
written as uint16, code 8) opens like any other shard, but every id above 32767 reads as
negative and training dies inside the embedding. So each shard's ids are checked against the
model's vocabulary before training, from its min and max.

The scan reads the memory-mapped `.bin` in chunks (bounded memory) and is stored in the sidecar
`<prefix>.range.json`:

    {"format": "skein.binidx.range", "dtype_code": 8, "bin_bytes": ..., "bin_mtime_ns": ...,
     "min": 0, "max": 256}

The sidecar holds for as long as the dtype code, the `.bin` size and its modification time are the
ones it records; otherwise the shard is scanned again. It is written atomically (a temporary file
in the same folder, read back, renamed); where the folder is read-only the range is measured on
each load instead.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

import numpy as np

from skein.data.binidx_codes import BinIdxError, dtype_code


class BinIdxDataset(Protocol):
    """What the scan reads of a shard (data/binidx.py BinIdxDataset)."""

    prefix: str
    bin_path: str
    idx_path: str
    dtype: np.dtype
    num_tokens: int
    tokens: np.ndarray


RANGE_SUFFIX = ".range.json"
RANGE_FORMAT = "skein.binidx.range"
# Offset of the dtype code in the .idx header (after the 9-byte magic and the 8-byte version).
DTYPE_BYTE = 17
SCAN_CHUNK = 1 << 24


def range_path(ds: BinIdxDataset) -> str:
    return ds.prefix + RANGE_SUFFIX


def _stamp(ds: BinIdxDataset) -> dict[str, Any]:
    st = os.stat(ds.bin_path)
    return {
        "format": RANGE_FORMAT,
        "dtype_code": dtype_code(ds.dtype),
        "bin_bytes": st.st_size,
        "bin_mtime_ns": st.st_mtime_ns,
    }


def scan_range(ds: BinIdxDataset, chunk: int = SCAN_CHUNK) -> tuple[int, int]:
    """(min, max) token id of the shard, read `chunk` tokens at a time."""
    lo, hi = None, None
    for s in range(0, ds.num_tokens, chunk):
        block = ds.tokens[s : s + chunk]
        b_lo, b_hi = int(block.min()), int(block.max())
        lo = b_lo if lo is None else min(lo, b_lo)
        hi = b_hi if hi is None else max(hi, b_hi)
    assert lo is not None and hi is not None  # BinIdxDataset refuses empty shards
    return lo, hi


def _read_cached(ds: BinIdxDataset, stamp: dict[str, Any]) -> tuple[int, int] | None:
    try:
        with open(range_path(ds)) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or any(d.get(k) != v for k, v in stamp.items()):
        return None
    lo, hi = d.get("min"), d.get("max")
    return (lo, hi) if isinstance(lo, int) and isinstance(hi, int) else None


def _write_cached(ds: BinIdxDataset, record: dict[str, Any]) -> None:
    path = range_path(ds)
    tmp = f"{path}.{os.getpid()}.tmp"
    text = json.dumps(record, indent=1) + "\n"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        with open(tmp) as f:
            if f.read() != text:
                raise OSError(f"{tmp}: read back differs")
        os.replace(tmp, path)
    except OSError:  # a read-only data folder: measure again next time
        if os.path.exists(tmp):
            os.remove(tmp)


def token_range(ds: BinIdxDataset, chunk: int = SCAN_CHUNK) -> tuple[int, int]:
    """(min, max) token id of the shard: from its sidecar when that is current, else scanned and
    recorded."""
    stamp = _stamp(ds)
    cached = _read_cached(ds, stamp)
    if cached is not None:
        return cached
    lo, hi = scan_range(ds, chunk)
    _write_cached(ds, {**stamp, "min": lo, "max": hi})
    return lo, hi


def check_token_range(ds: BinIdxDataset, vocab_size: int, chunk: int = SCAN_CHUNK) -> tuple[int, int]:
    """Raise BinIdxError naming the shard and its dtype code when an id is negative or
    >= vocab_size; return (min, max)."""
    lo, hi = token_range(ds, chunk)
    code = dtype_code(ds.dtype)
    if lo < 0:
        hint = (
            "the data was made with a larger vocabulary or another tool; re-run skein prepare on the source"
        )
        if ds.dtype.kind == "i":
            unsigned = np.dtype(f"u{ds.dtype.itemsize}")
            if unsigned.itemsize in (1, 2):
                hint = (
                    f"if the tokens were written as {unsigned}, the .idx has the wrong signedness: set byte "
                    f"{DTYPE_BYTE} of {ds.idx_path} to {dtype_code(unsigned)} ({unsigned}), or re-run "
                    "skein prepare on the source"
                )
        raise BinIdxError(
            f"{ds.bin_path}: negative token id {lo} read with dtype code {code} ({ds.dtype}) from "
            f"{ds.idx_path}: {hint}"
        )
    if hi >= vocab_size:
        raise BinIdxError(
            f"{ds.bin_path}: token id {hi} >= vocab_size {vocab_size} (dtype code {code}, {ds.dtype}): the "
            "shards were made with a larger vocabulary than the model has; use the model's tokenizer in "
            "skein prepare, or raise model.vocab_size"
        )
    return lo, hi
