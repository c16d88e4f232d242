"""Megatron / GPT-NeoX `MMapIndexedDataset` shards: a memory-mapped reader and an atomic writer.

A dataset is a pair of files sharing a prefix:

`<prefix>.idx` (all integers little-endian):

| bytes          | field                                                        |
| -------------- | ------------------------------------------------------------ |
| 9              | magic b"MMIDIDX\\x00\\x00"                                   |
| 8  (uint64)    | version, always 1                                            |
| 1  (uint8)     | dtype code of the tokens (table `DTYPE_CODES`)               |
| 8  (uint64)    | n = number of sequences                                      |
| 8  (uint64)    | m = number of document-index entries                         |
| 4n (int32)     | sizes[n]: tokens in each sequence                            |
| 8n (int64)     | pointers[n]: byte offset of each sequence in the .bin        |
| 8m (int64)     | doc_idx[m]: sequence index where each document starts, then n |

`<prefix>.bin`: the tokens of all sequences back to back, in the dtype of the header.

skein writes one sequence per document (doc_idx = 0, 1, ..., n) and reads the .bin as one flat
token stream, so it requires the sequences to be contiguous and to cover the .bin exactly; every
other inconsistency is an error naming the file, never a silent wrong read.

`prepare` adds `<prefix>.meta.json` (tokenizer identity, vocab_size, eod_id, counts, shard names);
`read_meta` reads it (None for pairs made elsewhere) and `resolve_shards` turns an output prefix
into its list of pairs. Each pair's token range is kept in `<prefix>.range.json` (data/token_range.py).
"""

from __future__ import annotations

import json
import os
import re
import struct
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from skein.data.binidx_codes import DTYPE_CODES, FLOAT_CODES, BinIdxError, dtype_code
from skein.data.binidx_codes import best_dtype as best_dtype
from skein.data.token_range import check_token_range

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# magic, version, dtype code, sequence count, document-index count
HEADER = struct.Struct("<9sQBQQ")

# Sequences checked per step when an index is opened (bounds the memory of the checks).
VALIDATE_CHUNK = 1 << 22


def split_prefix(prefix: str | Path) -> str:
    """The common prefix of a pair; a path ending in .bin or .idx is accepted and trimmed."""
    p = str(prefix)
    return p[:-4] if p.endswith((".bin", ".idx")) else p


class BinIdxDataset:
    """Read-only, zero-copy view of a `<prefix>.bin` / `<prefix>.idx` pair.

    `len(ds)` is the number of sequences (one per document for skein's shards), `ds.tokens` the flat
    1-D memmap of every token [num_tokens], `ds.doc(i)` sequence i and `ds.get(start, length)` a
    window of the flat stream; both return views of the memmap, not copies.
    Pickling stores only the prefix, so DataLoader workers re-open the maps instead of copying them.
    """

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = split_prefix(prefix)
        self.idx_path = self.prefix + ".idx"
        self.bin_path = self.prefix + ".bin"
        self._open()

    def _open(self) -> None:
        for path in (self.idx_path, self.bin_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such file (a binidx dataset needs both .bin and .idx)")
        idx_size = os.path.getsize(self.idx_path)
        with open(self.idx_path, "rb") as f:
            head = f.read(HEADER.size)
        if not head:
            raise BinIdxError(f"{self.idx_path}: empty file (0 bytes), not an index")
        if head[: len(MAGIC)] != MAGIC[: len(head)]:
            raise BinIdxError(
                f"{self.idx_path}: wrong magic {head[: len(MAGIC)]!r}, expected {MAGIC!r} "
                "(not a Megatron MMapIndexedDataset index)"
            )
        if len(head) < HEADER.size:
            raise BinIdxError(f"{self.idx_path}: truncated header ({idx_size} bytes, need {HEADER.size})")
        _, version, code, n, m = HEADER.unpack(head)
        if version != VERSION:
            raise BinIdxError(
                f"{self.idx_path}: unsupported version {version} (only version {VERSION} is defined)"
            )
        if code in FLOAT_CODES:
            raise BinIdxError(
                f"{self.idx_path}: dtype code {code} is {FLOAT_CODES[code]}, which cannot hold token ids"
            )
        if code not in DTYPE_CODES:
            raise BinIdxError(f"{self.idx_path}: unknown dtype code {code} (known: {sorted(DTYPE_CODES)})")
        self.dtype = DTYPE_CODES[code]
        need = HEADER.size + 4 * n + 8 * n + 8 * m
        if idx_size < need:
            raise BinIdxError(
                f"{self.idx_path}: truncated: {idx_size} bytes, but the header announces {n} sequences "
                f"and {m} document entries ({need} bytes)"
            )
        if idx_size > need:
            raise BinIdxError(
                f"{self.idx_path}: {idx_size - need} unexpected bytes after the document index "
                f"({need} expected; multimodal indexes with sequence modes are not supported)"
            )
        self.sizes = (
            np.memmap(self.idx_path, np.int32, "r", HEADER.size, (n,)) if n else np.zeros(0, np.int32)
        )
        self.pointers = (
            np.memmap(self.idx_path, np.int64, "r", HEADER.size + 4 * n, (n,)) if n else np.zeros(0, np.int64)
        )
        self.doc_idx = (
            np.memmap(self.idx_path, np.int64, "r", HEADER.size + 12 * n, (m,))
            if m
            else np.zeros(0, np.int64)
        )
        self.num_tokens = self._validate(n)
        self.tokens = np.memmap(self.bin_path, self.dtype, "r", 0, (self.num_tokens,))

    def _validate(self, n: int) -> int:
        """Check sizes, pointers and the document index (in chunks: bounded memory); return the
        number of tokens."""
        if n == 0:
            raise BinIdxError(f"{self.idx_path}: empty dataset (0 sequences)")
        item = self.dtype.itemsize
        bin_size = os.path.getsize(self.bin_path)
        total, chunk = 0, VALIDATE_CHUNK
        for s in range(0, n, chunk):
            sizes = self.sizes[s : s + chunk].astype(np.int64)
            ptrs = np.asarray(self.pointers[s : s + chunk])
            if (sizes < 0).any():
                raise BinIdxError(
                    f"{self.idx_path}: negative sequence size at {s + int(np.argmax(sizes < 0))}"
                )
            ends = ptrs + sizes * item
            bad = (ptrs < 0) | (ends > bin_size)
            if bad.any():
                i = int(np.argmax(bad))
                raise BinIdxError(
                    f"{self.bin_path}: too short for its index: sequence {s + i} spans bytes "
                    f"[{int(ptrs[i])}, {int(ends[i])}) but the file has {bin_size} bytes"
                )
            starts = (total + np.cumsum(sizes) - sizes) * item
            if not np.array_equal(ptrs, starts):
                i = int(np.argmax(ptrs != starts))
                raise BinIdxError(
                    f"{self.idx_path}: sequence {s + i} starts at byte {int(ptrs[i])}, expected "
                    f"{int(starts[i])}: the sequences are not contiguous from byte 0"
                )
            total += int(sizes.sum())
        if total * item != bin_size:
            raise BinIdxError(
                f"{self.bin_path}: {bin_size} bytes but the index covers {total * item}: the .bin and .idx "
                "do not belong together"
            )
        prev = 0
        for s in range(0, len(self.doc_idx), chunk):
            d = np.asarray(self.doc_idx[s : s + chunk])
            if d.min() < prev or d.max() > n or (np.diff(d) < 0).any():
                raise BinIdxError(f"{self.idx_path}: document index is not a non-decreasing list in [0, {n}]")
            prev = int(d[-1])
        if total == 0:
            raise BinIdxError(f"{self.idx_path}: empty dataset ({n} sequences, 0 tokens)")
        return total

    def __len__(self) -> int:
        return len(self.sizes)

    def doc(self, i: int) -> np.ndarray:
        """Tokens of sequence i [sizes[i]] (a view of the memmap)."""
        n = len(self.sizes)
        if not -n <= i < n:
            raise IndexError(f"{self.prefix}: sequence {i} out of range for {n} sequences")
        i %= n
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.sizes[i])]

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the flat stream [length] (a view of the memmap)."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(
                f"{self.prefix}: tokens [{start}, {start + length}) out of range for {self.num_tokens} tokens"
            )
        return self.tokens[start : start + length]

    def check_vocab(self, vocab_size: int, chunk: int = 1 << 24) -> int:
        """Raise when any token id is negative or >= vocab_size (naming the file and the dtype
        code); return the largest id. The range is scanned in chunks of `chunk` tokens once and
        kept in `<prefix>.range.json` (see data/token_range.py)."""
        return check_token_range(self, vocab_size, chunk)[1]

    def __getstate__(self) -> dict[str, str]:
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["prefix"])

    def __repr__(self) -> str:
        return f"BinIdxDataset({self.prefix!r}, sequences={len(self)}, tokens={self.num_tokens}, dtype={self.dtype})"


class BinIdxWriter:
    """Writes a `<prefix>.bin` / `<prefix>.idx` pair one document at a time.

    Tokens stream to `<prefix>.bin.tmp`; `finalize()` (alias `close()`, or leaving a `with` block)
    writes `<prefix>.idx.tmp` and renames both into place, the stale .idx first, so an interrupted
    write never leaves a pair that looks valid. Leaving a `with` block on an exception aborts:
    the temporary files are removed and nothing is renamed.
    Memory: 4 bytes per document for the sizes, nothing per token.
    """

    def __init__(self, prefix: str | Path, dtype: Any) -> None:
        self.prefix = split_prefix(prefix)
        self.dtype = np.dtype(dtype)
        self._code = dtype_code(self.dtype)
        self._info = np.iinfo(self.dtype)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = self.prefix + ".bin.tmp"
        self._idx_tmp = self.prefix + ".idx.tmp"
        self._bin = open(self._bin_tmp, "wb")
        self._sizes = array("i")
        self.num_tokens = 0
        self.done = False

    def __len__(self) -> int:
        return len(self._sizes)

    def add_document(self, tokens: Any) -> None:
        """Append one document (a sequence of token ids) as one sequence."""
        if self.done:
            raise RuntimeError(f"{self.prefix}: writer already finalized")
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"{self.prefix}: a document must be 1-D, got shape {arr.shape}")
        if arr.size and arr.dtype != self.dtype:
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{self.prefix}: token ids must be integers, got {arr.dtype}")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < self._info.min or hi > self._info.max:
                raise ValueError(f"{self.prefix}: token ids [{lo}, {hi}] do not fit in {self.dtype}")
            arr = arr.astype(self.dtype)
        if arr.size > np.iinfo(np.int32).max:
            raise ValueError(f"{self.prefix}: a document of {arr.size} tokens exceeds the int32 size field")
        self._bin.write(np.ascontiguousarray(arr, dtype=self.dtype).tobytes())
        self._sizes.append(int(arr.size))
        self.num_tokens += int(arr.size)

    def finalize(self) -> None:
        """Write the index and rename both files into place."""
        if self.done:
            return
        if self.num_tokens == 0:
            self.abort()
            raise BinIdxError(f"{self.prefix}: refusing to write an empty dataset (0 tokens)")
        self._bin.close()
        n = len(self._sizes)
        item = self.dtype.itemsize
        with open(self._idx_tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, self._code, n, n + 1))
            sizes = np.frombuffer(self._sizes, dtype=np.int32)
            f.write(sizes.tobytes())
            step, offset = 1 << 20, 0
            for s in range(0, n, step):
                part = sizes[s : s + step].astype(np.int64) * item
                f.write((offset + np.cumsum(part) - part).tobytes())
                offset += int(part.sum())
            f.write(np.arange(n + 1, dtype=np.int64).tobytes())
        for path in (self.prefix + ".idx", self.prefix + ".bin"):
            if os.path.exists(path):
                os.remove(path)
        os.replace(self._bin_tmp, self.prefix + ".bin")
        os.replace(self._idx_tmp, self.prefix + ".idx")
        self.done = True

    close = finalize

    def abort(self) -> None:
        """Drop everything written so far; no file is left at the prefix by this writer."""
        if not self._bin.closed:
            self._bin.close()
        for path in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(path):
                os.remove(path)
        self.done = True

    def __enter__(self) -> BinIdxWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


META_SUFFIX = ".meta.json"
META_FORMAT = "skein.binidx.meta"
SHARD_PATTERN = re.compile(r"(.*)_(\d{5}|val)")


def meta_path(prefix: str | Path) -> str:
    return split_prefix(prefix) + META_SUFFIX


def read_meta(prefix: str | Path) -> dict[str, Any] | None:
    """The `<prefix>.meta.json` that `prepare` wrote (tokenizer identity, vocab_size, eod_id,
    counts, shard names), or None when there is none (e.g. shards made by GPT-NeoX).

    A shard prefix `<output>_00000` or `<output>_val` finds the meta file of `<output>`.
    The returned dict has `meta_path` added.
    """
    p = split_prefix(prefix)
    candidates = [p]
    m = SHARD_PATTERN.fullmatch(p)
    if m:
        candidates.append(m.group(1))
    for c in candidates:
        path = meta_path(c)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                meta = json.load(f)
        except json.JSONDecodeError as e:
            raise BinIdxError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
            raise BinIdxError(f"{path}: not a skein meta file (format field is not {META_FORMAT!r})")
        meta["meta_path"] = path
        return meta
    return None


def resolve_shards(prefix: str | Path) -> list[str]:
    """Prefixes of the pairs that make up a dataset: `<prefix>` itself when `<prefix>.bin` exists,
    else the shards its meta file lists, else `<prefix>_NNNNN` pairs found on disk, in order."""
    p = split_prefix(prefix)
    if os.path.isfile(p + ".bin") or os.path.isfile(p + ".idx"):
        return [p]
    meta = read_meta(p) if os.path.isfile(meta_path(p)) else None
    if meta is not None:
        folder = os.path.dirname(meta["meta_path"])
        return [os.path.join(folder, name) for name in meta["shards"]]
    folder, base = os.path.split(p)
    found = (
        sorted(
            os.path.join(folder, name[:-4])
            for name in os.listdir(folder or ".")
            if name.endswith(".bin") and re.fullmatch(re.escape(base) + r"_\d{5}", name[:-4])
        )
        if os.path.isdir(folder or ".")
        else []
    )
    if not found:
        raise FileNotFoundError(f"{p}.bin: no such file, and no shards {p}_00000.bin ... or {p}{META_SUFFIX}")
    return found
