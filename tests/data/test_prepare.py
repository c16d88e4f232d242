"""prepare: every input kind, EOD placement, shards, held-out split, meta, errors, atomic outputs."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from skein.data.binidx import BinIdxDataset, BinIdxWriter, resolve_shards
from skein.data.prepare import prepare, read_meta
from skein.data.stdlib_corpus import stdlib_documents
from skein.data.tokenizer import load_tokenizer
from tests.data.test_tokenizer import train_bpe


def make_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "βήτα", "гамма", "delta", "ε", "数据", "🙂", "zeta\n", "eta,", "θ\t"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 80))) for _ in range(n)]


def write_jsonl(path: Path, texts: list[str], key: str = "text") -> None:
    path.write_text(
        "".join(json.dumps({key: t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8"
    )


tokenizer = functools.cache(load_tokenizer)


def expected_tokens(spec: str, texts: list[str], eod: bool = True) -> list[int]:
    tok = tokenizer(spec)
    return [t for text in texts for t in tok.encode(text) + ([tok.eod_id] if eod else [])]


def read_all(prefix: str | Path) -> list[int]:
    return [t for p in resolve_shards(prefix) for t in BinIdxDataset(p).tokens.tolist()]


@pytest.mark.parametrize("spec", ["byte", "rwkv_world", "hf"])
def test_jsonl_workers_agree(tmp_path: Path, spec: str) -> None:
    if spec == "hf":
        train_bpe(tmp_path / "tokenizer.json")
        spec = f"hf:{tmp_path / 'tokenizer.json'}"
    texts_a, texts_b = make_texts(30, 0), make_texts(25, 1)
    write_jsonl(tmp_path / "a.jsonl", texts_a)
    write_jsonl(tmp_path / "b.jsonl", texts_b)
    inputs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    one = prepare(inputs, str(tmp_path / "one"), tokenizer=spec, progress=False)
    two = prepare(inputs, str(tmp_path / "two"), tokenizer=spec, workers=2, chunksize=3, progress=False)
    want = expected_tokens(spec, texts_a + texts_b)
    assert read_all(tmp_path / "one") == want
    assert (tmp_path / "one.bin").read_bytes() == (tmp_path / "two.bin").read_bytes()
    assert (tmp_path / "one.idx").read_bytes() == (tmp_path / "two.idx").read_bytes()
    ds = BinIdxDataset(tmp_path / "one")
    eod = tokenizer(spec).eod_id
    assert len(ds) == 55 and all(ds.doc(i)[-1] == eod for i in range(55))
    assert one["documents"] == 55 and one["tokens"] == len(want) == two["tokens"]
    assert one["bytes"] == sum(len(t.encode()) for t in texts_a + texts_b)
    meta = read_meta(tmp_path / "one")
    assert meta is not None and meta["tokenizer"] == tokenizer(spec).identity()
    assert meta["vocab_size"] == tokenizer(spec).vocab_size and meta["eod_id"] == eod
    assert meta["dtype"] == ds.dtype.name and meta["shards"] == ["one"] and meta["inputs"] == inputs


def test_text_folder(tmp_path: Path) -> None:
    texts = make_texts(5, 2)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / ".hidden").mkdir()
    names = ["in/b.txt", "in/a.md", "in/sub/c.py", "in/sub/a", "in/.skip.txt"]
    for name, text in zip(names, texts):
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "in" / ".hidden" / "x.txt").write_text("hidden")
    (tmp_path / "in" / "empty.txt").write_text("")
    prepare([str(tmp_path / "in")], str(tmp_path / "o"), append_eod=False, progress=False)
    ds = BinIdxDataset(tmp_path / "o")
    order = [1, 0, 3, 2]  # a.md, b.txt, (empty.txt skipped), sub/a, sub/c.py
    assert [bytes(ds.doc(i).tolist()).decode() for i in range(len(ds))] == [texts[i] for i in order]
    (tmp_path / "in" / "bin.dat").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"bin\.dat: not UTF-8 text"):
        prepare([str(tmp_path / "in")], str(tmp_path / "o2"), progress=False)


def test_hugging_face_inputs(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    tr, va = make_texts(12, 3), make_texts(4, 4)
    DatasetDict(
        {"train": Dataset.from_dict({"body": tr}), "validation": Dataset.from_dict({"body": va})}
    ).save_to_disk(str(tmp_path / "dd"))
    Dataset.from_dict({"body": va}).save_to_disk(str(tmp_path / "single"))
    (tmp_path / "pq").mkdir()
    Dataset.from_dict({"body": tr, "n": list(range(12))}).to_parquet(str(tmp_path / "pq" / "part.parquet"))

    out = prepare(
        [str(tmp_path / "dd")], str(tmp_path / "o1"), text_key="body", hf_split="validation", progress=False
    )
    assert read_all(tmp_path / "o1") == expected_tokens("byte", va) and out["documents"] == 4
    prepare(
        [str(tmp_path / "single"), str(tmp_path / "pq" / "part.parquet")],
        str(tmp_path / "o2"),
        text_key="body",
        progress=False,
    )
    assert read_all(tmp_path / "o2") == expected_tokens("byte", va + tr)
    prepare([f"hf:{tmp_path / 'pq'}"], str(tmp_path / "o3"), text_key="body", progress=False)
    assert read_all(tmp_path / "o3") == expected_tokens("byte", tr)
    (tmp_path / "mixed").mkdir()
    write_jsonl(tmp_path / "mixed" / "a.jsonl", tr[:3], key="body")
    Dataset.from_dict({"body": va}).save_to_disk(str(tmp_path / "mixed" / "b_saved"))
    prepare([str(tmp_path / "mixed")], str(tmp_path / "o6"), text_key="body", progress=False)
    assert read_all(tmp_path / "o6") == expected_tokens("byte", tr[:3] + va)
    with pytest.raises(ValueError, match=r"dd: no split 'test'"):
        prepare(
            [str(tmp_path / "dd")], str(tmp_path / "o4"), text_key="body", hf_split="test", progress=False
        )
    with pytest.raises(ValueError, match=r"single: no column 'text' \(columns: \['body'\]\)"):
        prepare([str(tmp_path / "single")], str(tmp_path / "o5"), progress=False)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "line,message",
    [
        ('{"text": "ok"', r"bad\.jsonl:3: bad JSON"),
        ('{"body": "no text key"}', r"bad\.jsonl:3: no 'text' field \(found \['body'\]\)"),
        ('{"text": 42}', r"bad\.jsonl:3: field 'text' is int, not a string"),
        ("[1, 2]", r"bad\.jsonl:3: no 'text' field \(found list\)"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, workers: int, line: str, message: str) -> None:
    good = [json.dumps({"text": t}) for t in make_texts(2, 5)]
    (tmp_path / "bad.jsonl").write_text("\n".join(good + [line] + good) + "\n")
    write_jsonl(tmp_path / "first.jsonl", make_texts(50, 6))
    inputs = [str(tmp_path / "first.jsonl"), str(tmp_path / "bad.jsonl")]
    prepare(inputs[:1], str(tmp_path / "out"), shard_tokens=500, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=message):
        prepare(inputs, str(tmp_path / "out"), workers=workers, chunksize=2, shard_tokens=300, progress=False)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before, (
        "a failed run must leave the previous outputs as they were and no files of its own"
    )


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.jsonl: no such file"):
        prepare([str(tmp_path / "nothing.jsonl")], str(tmp_path / "o"), progress=False)


def test_shards_val_and_stale_cleanup(tmp_path: Path) -> None:
    texts = make_texts(60, 7)
    write_jsonl(tmp_path / "in.jsonl", texts)
    inp = [str(tmp_path / "in.jsonl")]
    s = prepare(inp, str(tmp_path / "d"), val_fraction=0.1, shard_tokens=2000, progress=False)
    held = [i for i in range(60) if (i + 1) // 10 > i // 10]
    assert held == [9, 19, 29, 39, 49, 59] and s["val_documents"] == 6
    train = [t for i, t in enumerate(texts) if i not in held]
    assert read_all(tmp_path / "d") == expected_tokens("byte", train)
    assert BinIdxDataset(tmp_path / "d_val").tokens.tolist() == expected_tokens(
        "byte", [texts[i] for i in held]
    )
    shards = [BinIdxDataset(p) for p in resolve_shards(tmp_path / "d")]
    assert len(shards) == len(s["shards"]) > 2
    assert all(sh.num_tokens >= 2000 for sh in shards[:-1])
    assert all(sh.num_tokens - int(sh.sizes[-1]) < 2000 for sh in shards)
    meta = read_meta(tmp_path / "d_00001")
    assert (
        meta is not None
        and meta["shards"] == [f"d_{i:05d}" for i in range(len(shards))]
        and meta["val"] == "d_val"
    )
    assert meta["val_documents"] == 6 and meta["documents"] == 54

    prepare(inp, str(tmp_path / "d"), progress=False)
    assert sorted(p.name for p in tmp_path.glob("d*")) == ["d.bin", "d.idx", "d.meta.json"]
    assert read_all(tmp_path / "d") == expected_tokens("byte", texts)


def test_default_corpus_is_the_stdlib(tmp_path: Path) -> None:
    docs = [text for _, text in stdlib_documents(150_000) if text]  # prepare skips empty files
    assert 3 <= len(docs) and sum(len(d.encode()) for d in docs) <= 150_000
    s = prepare(None, str(tmp_path / "std"), stdlib_max_bytes=150_000, workers=2, progress=False)
    assert read_all(tmp_path / "std") == expected_tokens("byte", docs)
    assert s["documents"] == len(docs) and s["inputs"][0].startswith("stdlib:")
    names = [name for name, _ in stdlib_documents(150_000)]
    assert names == sorted(names) and names[0].endswith(".py")


def test_read_meta_absent_and_invalid(tmp_path: Path) -> None:
    with BinIdxWriter(tmp_path / "neox", np.uint16) as w:
        w.add_document(np.arange(1, 40))
    assert read_meta(tmp_path / "neox") is None
    assert resolve_shards(tmp_path / "neox") == [str(tmp_path / "neox")]
    (tmp_path / "neox.meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match=r"neox\.meta\.json: not a skein meta file"):
        read_meta(tmp_path / "neox")
    with pytest.raises(FileNotFoundError, match=r"none\.bin: no such file, and no shards"):
        resolve_shards(tmp_path / "none")
