"""Tokenizers: byte ids, Hugging Face JSON, and RWKV World against the official package's encoder."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from skein.data.tokenizer import RWKV_WORLD_FILE, load_tokenizer, official_rwkv_vocab

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.\n\n    def f(x):\n\t\treturn x ** 2  # squared\n",
    "你好，世界！今天天气很好，我们去公园散步吧。人工智能正在改变世界。",
    "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "مرحبا بالعالم. هذه جملة عربية للاختبار مع أرقام ١٢٣ و 456.",
    "日本語のテキストとカタカナ、ひらがな。東京は大きい都市です。",
    "한국어 문장입니다. 안녕하세요! Emoji: 🙂🚀👩‍👩‍👧‍👦 🇫🇷 and combining é vs é.",
    "Ελληνικά, עברית, हिन्दी भाषा, ภาษาไทย, Tiếng Việt có dấu.",
    " " * 300 + "\n" * 7 + "-" * 90 + "#" * 85 + "\x00\x01\x7f\u2028",
    "http://example.com/a?b=c&d=e#frag  user@example.org  0xDEADBEEF 3.14159e-10",
]


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0x0, 0x1F), (0xA0, 0x24F), (0x400, 0x4FF), (0x4E00, 0x9FFF), (0x3040, 0x30FF),
              (0x600, 0x6FF), (0x1F300, 0x1FAFF), (0xAC00, 0xD7A3)]  # fmt: skip
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 60)):
            lo, hi = rng.choice(ranges)
            parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 12))))
            parts.append(rng.choice([" ", "  ", "\n", "", "\t", ". ", ", "]))
        out.append("".join(parts))
    return out


def test_byte_tokenizer() -> None:
    tok = load_tokenizer("byte")
    assert tok.vocab_size == 257 and tok.eod_id == 256
    for text in MULTILINGUAL + random_texts(20, 0):
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8")) and max(ids) < 256
        assert tok.decode(ids + [256]) == text
    assert tok.identity() == {
        "kind": "byte",
        "spec": "byte",
        "vocab_size": 257,
        "eod_id": 256,
        "sha256": None,
    }


OFFICIAL = """
import json, sys
import rwkv
from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
texts = json.load(open(sys.argv[1]))
tok = TRIE_TOKENIZER(sys.argv[2])
ids = [tok.encode(t) for t in texts]
json.dump({"file": rwkv.__file__, "ids": ids, "decoded": [tok.decode(i) for i in ids]}, sys.stdout)
"""


def test_rwkv_world_matches_official_package(tmp_path: Path) -> None:
    tok = load_tokenizer("rwkv_world")
    texts = MULTILINGUAL + random_texts(40, 1)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    # Run from an empty folder so `import rwkv` is the official package, not the repository's rwkv/.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, "-c", OFFICIAL, str(tmp_path / "texts.json"), tok.path],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    ref = json.loads(res.stdout)
    assert "site-packages" in ref["file"] or "dist-packages" in ref["file"], ref["file"]
    for text, want, want_text in zip(texts, ref["ids"], ref["decoded"]):
        got = tok.encode(text)
        assert got == want, f"mismatch on {text[:40]!r}"
        assert tok.decode(got) == want_text == text
    assert tok.vocab_size == 65536 and tok.eod_id == 0
    assert tok.decode([0] + tok.encode("abc") + [0]) == "abc"


def test_rwkv_world_identity_and_default_path() -> None:
    path = official_rwkv_vocab()
    assert path.name == RWKV_WORLD_FILE and path.is_file()
    ident = load_tokenizer("rwkv_world").identity()
    assert ident["kind"] == "rwkv_world" and ident["vocab_size"] == 65536 and ident["eod_id"] == 0
    assert ident["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_unknown_ids_are_those_decode_has_no_text_for() -> None:
    world = load_tokenizer("rwkv_world")
    unknown = world.unknown_ids(65536)
    assert 0 not in unknown and set(range(65530, 65536)) <= set(unknown)
    for i in unknown:
        with pytest.raises(ValueError, match=f"token id {i} is not in the vocabulary"):
            world.decode([i])
    known = sorted(set(range(65536)) - set(unknown))
    assert world.decode(known).count("\ufffd") < len(known)  # every known id decodes
    byte = load_tokenizer("byte")
    assert byte.unknown_ids(257) == [] and byte.unknown_ids(300) == list(range(257, 300))


def write_vocab(path: Path, extra: list[str]) -> None:
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)] + extra
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_greedy_longest_match_on_a_small_vocab(tmp_path: Path) -> None:
    write_vocab(tmp_path / "v.txt", ["300 'ab' 2", "301 'abc' 3", "302 'abcde' 5", "303 b'\\xe4\\xbd' 2"])
    tok = load_tokenizer(f"rwkv_world:{tmp_path / 'v.txt'}")
    a, b, c, d, x = (ord(ch) + 1 for ch in "abcdx")
    assert tok.encode("abcab") == [301, 300]
    assert tok.encode("abcdx") == [301, d, x], "a prefix of a longer token that is not itself a token"
    assert tok.encode("abcdeabcd") == [302, 301, d]
    assert tok.encode("a") == [a] and tok.encode("") == []
    assert tok.encode("你") == [303, 0xA0 + 1] and tok.decode(tok.encode("你ab")) == "你ab"
    assert tok.identity()["spec"] == f"rwkv_world:{tmp_path / 'v.txt'}"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["300 'ab' 3"], r"v\.txt:257: token 'ab' does not have byte length 3"),
        (["300 ab 2"], r"v\.txt:257: expected '<id> <str or bytes literal> <length>'"),
        (["300 'ab' 2", "300 'cd' 2"], r"v\.txt:258: id 300 or token b'cd' is reserved or repeated"),
        (["0 'ab' 2"], r"v\.txt:257: id 0 .* reserved"),
        (["70000 'ab' 2"], r"v\.txt: token id 70000 >= 65536"),
    ],
)
def test_rwkv_world_bad_vocab_lines(tmp_path: Path, extra: list[str], message: str) -> None:
    write_vocab(tmp_path / "v.txt", extra)
    with pytest.raises(ValueError, match=message):
        load_tokenizer(f"rwkv_world:{tmp_path / 'v.txt'}")


def test_rwkv_world_needs_every_byte(tmp_path: Path) -> None:
    (tmp_path / "v.txt").write_text("1 'a' 1\n2 'ab' 2\n")
    with pytest.raises(ValueError, match="single bytes .* have no token"):
        load_tokenizer(f"rwkv_world:{tmp_path / 'v.txt'}")


def train_bpe(path: Path, special: str | None = "<|endoftext|>") -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=[special] if special else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(MULTILINGUAL * 20 + random_texts(30, 2), trainer)
    tok.save(str(path))


def test_hf_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    train_bpe(tmp_path / "tokenizer.json")
    tok = load_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")
    ref = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.eod_id == 0 == ref.token_to_id("<|endoftext|>")
    assert tok.vocab_size == ref.get_vocab_size(with_added_tokens=True)
    for text in MULTILINGUAL + random_texts(10, 3):
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids + [tok.eod_id]) == text
    ident = tok.identity()
    assert (
        ident["kind"] == "hf"
        and ident["sha256"] == hashlib.sha256((tmp_path / "tokenizer.json").read_bytes()).hexdigest()
    )


def test_hf_eod_from_tokenizer_config(tmp_path: Path) -> None:
    train_bpe(tmp_path / "tokenizer.json", special=None)
    with pytest.raises(ValueError, match=r"tokenizer\.json: no end-of-document token"):
        load_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")
    from tokenizers import Tokenizer

    train_bpe(tmp_path / "tokenizer.json", special="<|endoftext|>")
    eos = Tokenizer.from_file(str(tmp_path / "tokenizer.json")).id_to_token(300)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": eos}}))
    assert load_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}").eod_id == 300


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer spec 'gpt2'"):
        load_tokenizer("gpt2")
    with pytest.raises(FileNotFoundError, match=r"nope\.json: tokenizer JSON not found"):
        load_tokenizer(f"hf:{tmp_path / 'nope.json'}")
    with pytest.raises(FileNotFoundError, match=r"huggingface\.co/EleutherAI/gpt-neox-20b"):
        load_tokenizer(f"hf:{tmp_path / '20B_tokenizer.json'}")
    with pytest.raises(FileNotFoundError, match=r"nope\.txt: RWKV World vocabulary not found"):
        load_tokenizer(f"rwkv_world:{tmp_path / 'nope.txt'}")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not a Hugging Face tokenizer\.json"):
        load_tokenizer(f"hf:{tmp_path / 'bad.json'}")
