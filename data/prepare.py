"""`skein prepare`: text in, tokenized binidx shards out.

Documents are read in order in the main process, tokenized by a pool of workers (`imap` keeps the
order; a semaphore bounds the documents in flight, so memory does not grow with the corpus), and
streamed into `BinIdxWriter`s: `<output>.bin/.idx` (or `<output>_00000.bin/.idx`, ... when
`shard_tokens` is set), `<output>_val.bin/.idx` for held-out documents, and `<output>.meta.json`
written last. The pairs are built in a hidden staging folder and moved into place only once every
document is written, so an interrupted run leaves no new pair (and the previous run's outputs
intact).

Inputs (each entry of `inputs`):
- a .jsonl file: one JSON object per line, the text under `text_key`;
- a .parquet or .arrow file: a Hugging Face `datasets` data file, column `text_key`;
- a directory written by `datasets`' `save_to_disk` (a DatasetDict takes split `hf_split`);
- "hf:<name or directory>": `datasets.load_dataset(..., split=hf_split)` from the local cache or
  local files only (HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set: nothing is downloaded);
- any other file: one document; any other directory: its files, recursively, in sorted order
  (names starting with '.' skipped), each read by the rules above.
With no inputs, the Python standard library's source (`stdlib_corpus`) is the corpus.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from skein.data import stdlib_corpus
from skein.data.binidx import META_FORMAT, BinIdxWriter, best_dtype, meta_path, read_meta
from skein.data.tokenizer import Tokenizer, load_tokenizer

__all__ = ["iter_documents", "prepare", "read_meta"]

HF_FILE_TYPES = {".parquet": "parquet", ".arrow": "arrow"}
HF_DISK_MARKERS = ("dataset_dict.json", "state.json")
HF_BATCH = 256


def _datasets() -> Any:
    """Import `datasets` with every network path switched off."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    return datasets


def _jsonl_documents(path: str, text_key: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: bad JSON: {e.msg} at column {e.colno}") from e
            if not isinstance(obj, dict) or text_key not in obj:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(f"{path}:{lineno}: no {text_key!r} field (found {keys})")
            text = obj[text_key]
            if not isinstance(text, str):
                raise ValueError(
                    f"{path}:{lineno}: field {text_key!r} is {type(text).__name__}, not a string"
                )
            yield text


def _hf_documents(ds: Any, name: str, text_key: str, hf_split: str) -> Iterator[str]:
    if isinstance(ds, dict):
        if hf_split not in ds:
            raise ValueError(f"{name}: no split {hf_split!r} (splits: {sorted(ds)})")
        ds = ds[hf_split]
    if text_key not in ds.column_names:
        raise ValueError(f"{name}: no column {text_key!r} (columns: {ds.column_names})")
    row = 0
    for batch in ds.select_columns([text_key]).iter(batch_size=HF_BATCH):
        for text in batch[text_key]:
            if not isinstance(text, str):
                raise ValueError(
                    f"{name}: row {row}: column {text_key!r} is {type(text).__name__}, not a string"
                )
            row += 1
            yield text


def _file_documents(path: str, text_key: str, hf_split: str) -> Iterator[str]:
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_documents(path, text_key)
    elif suffix in HF_FILE_TYPES:
        ds = _datasets().load_dataset(HF_FILE_TYPES[suffix], data_files=path, split="train")
        yield from _hf_documents(ds, path, text_key, hf_split)
    else:
        try:
            yield Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _input_documents(spec: str, text_key: str, hf_split: str) -> Iterator[str]:
    if spec.startswith("hf:"):
        name = spec[3:]
        try:
            ds = _datasets().load_dataset(name, split=hf_split)
        except Exception as e:
            raise ValueError(f"{spec}: cannot load from the local cache or files, offline ({e})") from e
        yield from _hf_documents(ds, spec, text_key, hf_split)
        return
    if not os.path.exists(spec):
        raise FileNotFoundError(f"{spec}: no such file or directory")
    yield from _path_documents(spec, text_key, hf_split)


def _path_documents(path: str, text_key: str, hf_split: str) -> Iterator[str]:
    if os.path.isfile(path):
        yield from _file_documents(path, text_key, hf_split)
    elif any(os.path.isfile(os.path.join(path, m)) for m in HF_DISK_MARKERS):
        yield from _hf_documents(_datasets().load_from_disk(path), path, text_key, hf_split)
    else:
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if not entry.name.startswith("."):
                yield from _path_documents(entry.path, text_key, hf_split)


def iter_documents(
    inputs: list[str] | None,
    text_key: str = "text",
    hf_split: str = "train",
    stdlib_max_bytes: int = stdlib_corpus.DEFAULT_MAX_BYTES,
) -> Iterator[str]:
    """Every document of `inputs` in order (see the module docstring); None = the stdlib corpus."""
    if inputs is None:
        for _, text in stdlib_corpus.stdlib_documents(stdlib_max_bytes):
            yield text
        return
    for spec in inputs:
        yield from _input_documents(str(spec), text_key, hf_split)


_worker: dict[str, Any] = {}


def _init_worker(spec: str, dtype: str, eod: int | None, tok: Tokenizer | None = None) -> None:
    """Set up this process's tokenizer; a forked worker inherits the parent's and skips loading."""
    if tok is None and _worker.get("spec") == spec:
        tok = _worker["tok"]
    _worker.update(spec=spec, tok=tok or load_tokenizer(spec), dtype=np.dtype(dtype), eod=eod)


def _encode(text: str) -> tuple[np.ndarray, int]:
    """Token ids of one document (+ EOD) in the shard dtype, and its UTF-8 byte count."""
    ids = _worker["tok"].encode(text)
    if _worker["eod"] is not None:
        ids.append(_worker["eod"])
    return np.asarray(ids, dtype=_worker["dtype"]), len(text.encode("utf-8"))


def _encoded(
    docs: Iterator[str], workers: int, chunksize: int, initargs: tuple, tok: Tokenizer
) -> Iterator[tuple[np.ndarray, int]]:
    """`_encode` over docs, in order, on `workers` processes with at most 4 chunks per worker in flight."""
    _init_worker(*initargs, tok=tok)
    if workers == 1:
        for text in docs:
            yield _encode(text)
        return
    slots = threading.Semaphore(chunksize * workers * 4)
    stop = threading.Event()

    def feed() -> Iterator[str]:
        for text in docs:
            slots.acquire()
            if stop.is_set():
                return
            yield text

    pool = Pool(workers, initializer=_init_worker, initargs=initargs)
    try:
        for result in pool.imap(_encode, feed(), chunksize):
            slots.release()
            yield result
        pool.close()
    finally:
        stop.set()
        slots.release(chunksize * workers * 4)
        pool.terminate()
        pool.join()


class _Outputs:
    """The train shards and the validation pair of one run.

    Pairs are written into a hidden staging folder `<dir>/.<name>.staging/` and moved next to
    `<output>` only by `publish()`, after the last document: a failed or killed run leaves the
    previous outputs (if any) untouched and no new pair at the output prefix.
    """

    def __init__(self, output: str, dtype: np.dtype, shard_tokens: int | None) -> None:
        self.output, self.dtype, self.shard_tokens = output, dtype, shard_tokens
        self.folder, self.base = os.path.split(output)
        self.staging = os.path.join(self.folder, f".{self.base}.staging")
        shutil.rmtree(self.staging, ignore_errors=True)
        os.makedirs(self.staging)
        self.shards: list[str] = []
        self.train: BinIdxWriter | None = None
        self.val: BinIdxWriter | None = None
        self.val_documents = self.val_tokens = self.val_bytes = 0

    def _writer(self, name: str) -> BinIdxWriter:
        return BinIdxWriter(os.path.join(self.staging, name), self.dtype)

    def add_train(self, ids: np.ndarray) -> None:
        if self.train is None:
            name = self.base if self.shard_tokens is None else f"{self.base}_{len(self.shards):05d}"
            self.train = self._writer(name)
            self.shards.append(name)
        self.train.add_document(ids)
        if self.shard_tokens is not None and self.train.num_tokens >= self.shard_tokens:
            self.train.finalize()
            self.train = None

    def add_val(self, ids: np.ndarray, nbytes: int) -> None:
        if self.val is None:
            self.val = self._writer(f"{self.base}_val")
        self.val.add_document(ids)
        self.val_documents += 1
        self.val_tokens += len(ids)
        self.val_bytes += nbytes

    @property
    def names(self) -> list[str]:
        return self.shards + ([f"{self.base}_val"] if self.val is not None else [])

    def finalize(self) -> None:
        for w in (self.train, self.val):
            if w is not None:
                w.finalize()

    def abort(self) -> None:
        for w in (self.train, self.val):
            if w is not None:
                w.abort()
        shutil.rmtree(self.staging, ignore_errors=True)

    def publish(self) -> list[str]:
        """Move the staged pairs into place (the stale .meta.json first, each .idx before its .bin
        is replaced), delete pairs of an earlier run that this one did not write, return those."""
        if os.path.exists(meta_path(self.output)):
            os.remove(meta_path(self.output))
        for name in self.names:
            final = os.path.join(self.folder, name)
            if os.path.exists(final + ".idx"):
                os.remove(final + ".idx")
            os.replace(os.path.join(self.staging, name + ".bin"), final + ".bin")
            os.replace(os.path.join(self.staging, name + ".idx"), final + ".idx")
        os.rmdir(self.staging)
        pattern = re.compile(re.escape(self.base) + r"(_\d{5}|_val)?\.(bin|idx)")
        removed = []
        for name in sorted(os.listdir(self.folder or ".")):
            if pattern.fullmatch(name) and name[:-4] not in self.names:
                os.remove(os.path.join(self.folder, name))
                removed.append(name)
        return removed


def prepare(
    inputs: list[str] | None = None,
    output: str = "runs/data/demo",
    tokenizer: str = "byte",
    text_key: str = "text",
    val_fraction: float = 0.0,
    workers: int = 1,
    shard_tokens: int | None = None,
    append_eod: bool = True,
    hf_split: str = "train",
    stdlib_max_bytes: int = stdlib_corpus.DEFAULT_MAX_BYTES,
    chunksize: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize documents into binidx shards plus a meta file; return (and print) a summary.

    Args:
        inputs: .jsonl / .parquet / .arrow / text files, folders of them, `save_to_disk` folders,
            or "hf:<name or folder>" (local cache only). None: the Python standard library's
            source files, capped at stdlib_max_bytes.
        output: path prefix of the outputs: <output>.bin/.idx (or <output>_00000.bin/.idx, ...),
            <output>_val.bin/.idx and <output>.meta.json.
        tokenizer: "byte", "hf:<tokenizer.json>" or "rwkv_world[:<rwkv_vocab_v20230424.txt>]".
        text_key: field of a JSON line / column of a Hugging Face dataset holding the text.
        val_fraction: fraction of documents held out into <output>_val (every 1/val_fraction-th
            document, deterministically); 0 for none.
        workers: tokenizer processes (1: tokenize in this process).
        shard_tokens: start a new numbered shard once one holds this many tokens (documents are
            not split); None for a single <output>.bin/.idx.
        append_eod: put the tokenizer's end-of-document id after every document.
        hf_split: split to read from a Hugging Face DatasetDict or a cached hub dataset.
        stdlib_max_bytes: size cap of the default stdlib corpus, in bytes of UTF-8.
        chunksize: documents sent to a worker at a time.
        progress: show a tqdm bar (tokens, tokens/s).

    Returns:
        The summary: documents, tokens, bytes, seconds, tokens_per_s, val_documents, val_tokens,
        shards, dtype, meta path and the tokenizer identity.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if workers < 1 or chunksize < 1:
        raise ValueError(f"workers and chunksize must be >= 1, got workers={workers}, chunksize={chunksize}")
    if shard_tokens is not None and shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive or None, got {shard_tokens}")
    output = str(output)
    tok: Tokenizer = load_tokenizer(tokenizer)
    dtype = best_dtype(tok.vocab_size)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    if inputs is None:
        described = [stdlib_corpus.describe(stdlib_max_bytes)]
    else:
        described = [str(i) for i in inputs]

    outs = _Outputs(output, dtype, shard_tokens)
    docs = (t for t in iter_documents(inputs, text_key, hf_split, stdlib_max_bytes) if t)
    initargs = (tokenizer, dtype.str, tok.eod_id if append_eod else None)
    n_docs = n_tokens = n_bytes = 0
    t0 = time.perf_counter()
    bar = tqdm(unit="tok", unit_scale=True, disable=not progress, desc="prepare")
    encoded = _encoded(docs, workers, chunksize, initargs, tok)
    try:
        for i, (ids, nbytes) in enumerate(encoded):
            # Held out: document i when floor((i + 1) f) > floor(i f), i.e. every 1/f-th document.
            if math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction):
                outs.add_val(ids, nbytes)
            else:
                outs.add_train(ids)
                n_docs += 1
                n_tokens += len(ids)
                n_bytes += nbytes
            bar.update(len(ids))
        if n_tokens == 0:
            raise ValueError(f"prepare: no training tokens from inputs {described}")
        outs.finalize()
    except BaseException:
        outs.abort()
        raise
    finally:
        encoded.close()
        bar.close()
    removed = outs.publish()
    seconds = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "format": META_FORMAT,
        "version": 1,
        "tokenizer": tok.identity(),
        "vocab_size": tok.vocab_size,
        "eod_id": tok.eod_id,
        "append_eod": append_eod,
        "dtype": dtype.name,
        "documents": n_docs,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "val_documents": outs.val_documents,
        "val_tokens": outs.val_tokens,
        "val_bytes": outs.val_bytes,
        "shards": outs.shards,
        "val": f"{outs.base}_val" if outs.val is not None else None,
        "inputs": described,
        "text_key": text_key,
        "hf_split": hf_split,
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round((n_tokens + outs.val_tokens) / max(seconds, 1e-9), 1),
    }
    tmp = meta_path(output) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, meta_path(output))
    summary["meta"] = meta_path(output)
    print(
        f"prepare: {n_docs:,} documents, {n_tokens:,} tokens, {n_bytes:,} bytes in {seconds:.1f} s "
        f"({summary['tokens_per_s']:,.0f} tokens/s); {outs.val_documents:,} held out; "
        f"{len(outs.shards)} shard(s) at {output}" + (f"; removed stale {removed}" if removed else "")
    )
    return summary
