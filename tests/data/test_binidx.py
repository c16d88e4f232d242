"""binidx: hand-packed fixtures read back, our writer's bytes parsed independently, every bad input."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from skein.data import binidx
from skein.data.binidx import BinIdxDataset, BinIdxError, BinIdxWriter, best_dtype

# The format as documented by Megatron / GPT-NeoX, restated here independently of data/binidx.py.
MAGIC = b"MMIDIDX\x00\x00"
STRUCT_CODE = {1: "B", 2: "b", 3: "h", 4: "i", 5: "q", 8: "H"}
NUMPY_OF_CODE = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}


def pack_idx(code: int, sizes: list[int], pointers: list[int], doc_idx: list[int], version: int = 1) -> bytes:
    out = MAGIC + struct.pack("<Q", version) + struct.pack("<B", code)
    out += struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(doc_idx))
    out += b"".join(struct.pack("<i", s) for s in sizes)
    out += b"".join(struct.pack("<q", p) for p in pointers)
    out += b"".join(struct.pack("<q", d) for d in doc_idx)
    return out


def pack_bin(code: int, docs: list[list[int]]) -> bytes:
    return b"".join(struct.pack("<" + STRUCT_CODE[code], t) for doc in docs for t in doc)


def random_docs(rng: np.random.Generator, code: int, n_docs: int) -> list[list[int]]:
    hi = min(int(np.iinfo(NUMPY_OF_CODE[code]).max), 70_000)
    return [rng.integers(0, hi + 1, size=int(rng.integers(1, 40))).tolist() for _ in range(n_docs)]


def write_fixture(prefix: Path, code: int, docs: list[list[int]]) -> None:
    item = struct.calcsize("<" + STRUCT_CODE[code])
    sizes = [len(d) for d in docs]
    pointers = [sum(sizes[:i]) * item for i in range(len(docs))]
    Path(f"{prefix}.idx").write_bytes(pack_idx(code, sizes, pointers, list(range(len(docs) + 1))))
    Path(f"{prefix}.bin").write_bytes(pack_bin(code, docs))


@pytest.mark.parametrize("code", sorted(STRUCT_CODE))
def test_reads_hand_packed_fixture(tmp_path: Path, code: int) -> None:
    rng = np.random.default_rng(code)
    docs = random_docs(rng, code, 23)
    write_fixture(tmp_path / "d", code, docs)
    ds = BinIdxDataset(tmp_path / "d")
    flat = [t for d in docs for t in d]
    assert len(ds) == 23 and ds.num_tokens == len(flat)
    assert ds.dtype == np.dtype(NUMPY_OF_CODE[code])
    assert ds.tokens.tolist() == flat
    for i in (0, 7, 22, -1):
        assert ds.doc(i).tolist() == docs[i]
    assert ds.get(5, 17).tolist() == flat[5:22]
    assert ds.doc_idx.tolist() == list(range(24))
    assert isinstance(ds.tokens, np.memmap) and isinstance(ds.get(3, 4).base, np.memmap)
    with pytest.raises(IndexError, match="out of range"):
        ds.get(len(flat) - 2, 3)
    with pytest.raises(IndexError, match="sequence 23"):
        ds.doc(23)


def parse_idx(raw: bytes) -> dict:
    """A byte-level parser of the .idx, written from the format description."""
    magic = raw[:9]
    version, code, n, m = struct.unpack_from("<QBQQ", raw, 9)
    off = 9 + 8 + 1 + 8 + 8
    sizes = list(struct.unpack_from(f"<{n}i", raw, off))
    pointers = list(struct.unpack_from(f"<{n}q", raw, off + 4 * n))
    doc_idx = list(struct.unpack_from(f"<{m}q", raw, off + 12 * n))
    assert len(raw) == off + 12 * n + 8 * m
    return dict(magic=magic, version=version, code=code, sizes=sizes, pointers=pointers, doc_idx=doc_idx)


@pytest.mark.parametrize("dtype,code", [(np.uint16, 8), (np.int32, 4), (np.uint8, 1)])
def test_writer_bytes_match_the_format(tmp_path: Path, dtype: type, code: int) -> None:
    rng = np.random.default_rng(1)
    docs = [
        rng.integers(0, np.iinfo(dtype).max + 1 if dtype != np.int32 else 100_000, size=n)
        for n in (5, 1, 31, 12)
    ]
    with BinIdxWriter(tmp_path / "w", dtype) as w:
        for d in docs:
            w.add_document(d)
    meta = parse_idx((tmp_path / "w.idx").read_bytes())
    item = np.dtype(dtype).itemsize
    assert meta["magic"] == MAGIC and meta["version"] == 1 and meta["code"] == code
    assert meta["sizes"] == [5, 1, 31, 12]
    assert meta["pointers"] == [0, 5 * item, 6 * item, 37 * item]
    assert meta["doc_idx"] == [0, 1, 2, 3, 4]
    assert (tmp_path / "w.bin").read_bytes() == pack_bin(code, [d.tolist() for d in docs])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin", "w.idx"]


def test_roundtrip_and_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 50_000, size=int(rng.integers(1, 300))) for _ in range(40)]
    w = BinIdxWriter(str(tmp_path / "r"), best_dtype(50_277))
    for d in docs:
        w.add_document(d.tolist())
    w.close()
    ds = BinIdxDataset(str(tmp_path / "r.bin"))
    assert ds.dtype == np.uint16
    again = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 500, "pickling must not copy the tokens"
    for i in range(40):
        np.testing.assert_array_equal(again.doc(i), docs[i])
    assert ds.check_vocab(50_277) == max(int(d.max()) for d in docs)


def test_best_dtype() -> None:
    assert best_dtype(257) == np.uint16 and best_dtype(65_499) == np.uint16
    assert best_dtype(65_500) == np.int32 and best_dtype(65_536) == np.int32
    with pytest.raises(ValueError, match="positive"):
        best_dtype(0)


def test_writer_is_atomic(tmp_path: Path) -> None:
    with BinIdxWriter(tmp_path / "a", np.uint16) as w:
        w.add_document([5, 6, 7])
        assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.idx").exists()
    old = BinIdxDataset(tmp_path / "a").tokens.tolist()
    with pytest.raises(RuntimeError, match="boom"):
        with BinIdxWriter(tmp_path / "a", np.uint16) as w:
            w.add_document([9, 9, 9, 9])
            raise RuntimeError("boom")
    assert BinIdxDataset(tmp_path / "a").tokens.tolist() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.idx"]
    w = BinIdxWriter(tmp_path / "e", np.uint16)
    with pytest.raises(BinIdxError, match="empty"):
        w.finalize()
    assert not list(tmp_path.glob("e.*"))


def test_writer_refuses_ids_that_do_not_fit(tmp_path: Path) -> None:
    w = BinIdxWriter(tmp_path / "f", np.uint16)
    with pytest.raises(ValueError, match="do not fit in uint16"):
        w.add_document(np.array([1, 70_000]))
    with pytest.raises(ValueError, match="do not fit"):
        w.add_document([-1, 3])
    with pytest.raises(ValueError, match="integers"):
        w.add_document(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="dtype"):
        BinIdxWriter(tmp_path / "g", np.float32)
    w.abort()


def good_pair(tmp_path: Path, code: int = 8) -> tuple[Path, list[list[int]]]:
    docs = random_docs(np.random.default_rng(3), code, 6)
    write_fixture(tmp_path / "x", code, docs)
    return tmp_path / "x", docs


def idx_with(tmp_path: Path, **change: object) -> Path:
    """The good fixture's .idx with header fields or arrays replaced."""
    prefix, docs = good_pair(tmp_path)
    sizes = [len(d) for d in docs]
    fields = dict(
        code=8, sizes=sizes, pointers=[2 * sum(sizes[:i]) for i in range(6)], doc_idx=list(range(7))
    )
    fields.update(change)
    (tmp_path / "x.idx").write_bytes(pack_idx(**fields))  # type: ignore[arg-type]
    return prefix


def test_error_missing_files(tmp_path: Path) -> None:
    prefix, _ = good_pair(tmp_path)
    (tmp_path / "x.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"x\.bin: no such file"):
        BinIdxDataset(prefix)
    good_pair(tmp_path)
    (tmp_path / "x.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"x\.idx: no such file"):
        BinIdxDataset(prefix)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda raw: b"TNTIDX\x00\x00\x00" + raw[9:], r"x\.idx: wrong magic"),
        (lambda raw: b"", r"x\.idx: empty file"),
        (lambda raw: raw[:20], r"x\.idx: truncated header"),
        (lambda raw: raw[:9] + struct.pack("<Q", 2) + raw[17:], r"x\.idx: unsupported version 2"),
        (lambda raw: raw[:17] + b"\x09" + raw[18:], r"x\.idx: unknown dtype code 9"),
        (lambda raw: raw[:17] + b"\x06" + raw[18:], r"x\.idx: dtype code 6 is float64"),
        (lambda raw: raw[:-5], r"x\.idx: truncated: .* 6 sequences and 7 document entries"),
        (lambda raw: raw + b"\x00" * 6, r"x\.idx: 6 unexpected bytes"),
    ],
)
def test_error_bad_index(tmp_path: Path, damage, message: str) -> None:
    prefix, _ = good_pair(tmp_path)
    raw = (tmp_path / "x.idx").read_bytes()
    (tmp_path / "x.idx").write_bytes(damage(raw))
    with pytest.raises(BinIdxError, match=message):
        BinIdxDataset(prefix)


def test_error_bin_too_short_or_long(tmp_path: Path) -> None:
    prefix, _ = good_pair(tmp_path)
    raw = (tmp_path / "x.bin").read_bytes()
    (tmp_path / "x.bin").write_bytes(raw[:-2])
    with pytest.raises(BinIdxError, match=r"x\.bin: too short for its index: sequence 5"):
        BinIdxDataset(prefix)
    (tmp_path / "x.bin").write_bytes(raw + b"\x01\x00")
    with pytest.raises(BinIdxError, match=r"x\.bin: .* do not belong together"):
        BinIdxDataset(prefix)


@pytest.mark.parametrize("chunk", [1 << 22, 2])
def test_error_pointers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(binidx, "VALIDATE_CHUNK", chunk)
    prefix, docs = good_pair(tmp_path)
    assert [BinIdxDataset(prefix).doc(i).tolist() for i in range(6)] == docs
    good = [2 * sum(len(d) for d in docs[:i]) for i in range(6)]
    prefix = idx_with(tmp_path, pointers=good[:5] + [10**9])
    with pytest.raises(
        BinIdxError, match=r"x\.bin: too short for its index: sequence 5 spans bytes \[1000000000"
    ):
        BinIdxDataset(prefix)
    prefix = idx_with(tmp_path, pointers=[0, 0, 0, 0, 0, 0])
    with pytest.raises(BinIdxError, match=r"x\.idx: sequence 1 starts at byte 0.*not contiguous"):
        BinIdxDataset(prefix)


def test_error_empty_dataset(tmp_path: Path) -> None:
    prefix = idx_with(tmp_path, sizes=[], pointers=[], doc_idx=[0])
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(BinIdxError, match=r"x\.idx: empty dataset \(0 sequences\)"):
        BinIdxDataset(prefix)
    prefix = idx_with(tmp_path, sizes=[0, 0], pointers=[0, 0], doc_idx=[0, 1, 2])
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(BinIdxError, match=r"x\.idx: empty dataset \(2 sequences, 0 tokens\)"):
        BinIdxDataset(prefix)


def test_error_negative_size_and_bad_doc_idx(tmp_path: Path) -> None:
    prefix, docs = good_pair(tmp_path)
    sizes = [len(d) for d in docs]
    idx_with(tmp_path, sizes=[-1] + sizes[1:])
    with pytest.raises(BinIdxError, match=r"x\.idx: negative sequence size at 0"):
        BinIdxDataset(prefix)
    idx_with(tmp_path, doc_idx=[0, 3, 2, 6])
    with pytest.raises(BinIdxError, match=r"x\.idx: document index"):
        BinIdxDataset(prefix)


def test_check_vocab_names_file_and_max_id(tmp_path: Path) -> None:
    docs = [[3, 17, 99], [1000, 4]]
    write_fixture(tmp_path / "v", 8, docs)
    ds = BinIdxDataset(tmp_path / "v")
    assert ds.check_vocab(1001) == 1000
    with pytest.raises(BinIdxError, match=r"v\.bin: token id 1000 >= vocab_size 1000"):
        ds.check_vocab(1000)
    with pytest.raises(BinIdxError, match="token id 1000 >= vocab_size 257"):
        ds.check_vocab(257, chunk=2)
    write_fixture(tmp_path / "n", 4, [[5, -3, 8]])
    with pytest.raises(BinIdxError, match=r"n\.bin: negative token id -3"):
        BinIdxDataset(tmp_path / "n").check_vocab(10)
