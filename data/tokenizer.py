"""Tokenizers for `prepare` and for reading samples back: byte, Hugging Face JSON, RWKV World.

`load_tokenizer(spec)` takes one string:

- "byte": ids 0..255 are the UTF-8 bytes, 256 is the end-of-document id (vocab_size 257).
- "hf:<path/to/tokenizer.json>": a Hugging Face `tokenizers` file (e.g. GPT-NeoX-20B's). The EOD id
  is the `eos_token` of a tokenizer_config.json beside it, else the first of `HF_EOD_CANDIDATES`
  that the vocabulary has. vocab_size counts the added tokens.
- "rwkv_world" or "rwkv_world:<path/to/rwkv_vocab_v20230424.txt>": the RWKV World vocabulary, one
  line per token `<id> <Python literal of str or bytes> <byte length>`; text is encoded by greedy
  longest match on its UTF-8 bytes; EOD = 0 (no token string). vocab_size is 65536, the size RWKV
  World models are built with (the file uses ids 1..65529). Without a path the vocabulary file of
  the installed official `rwkv` package is read (as a file; its code is not imported).

`identity()` is recorded next to the shards so training can refuse a model/tokenizer mismatch.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BYTE_EOD = 256
RWKV_WORLD_EOD = 0
RWKV_WORLD_VOCAB_SIZE = 65536
RWKV_WORLD_FILE = "rwkv_vocab_v20230424.txt"
HF_EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "[SEP]")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer(ABC):
    """Text <-> token ids. `eod_id` separates documents; decode drops it."""

    kind: str
    spec: str
    vocab_size: int
    eod_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no EOD added)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; EOD ids are skipped, invalid UTF-8 becomes U+FFFD."""

    def unknown_ids(self, n: int) -> list[int]:
        """The ids below `n` that have no text (a model's vocabulary may be padded past the
        tokenizer's); a sampler leaves them out."""
        return list(range(self.vocab_size, n))

    def identity(self) -> dict[str, Any]:
        """What a model trained on this tokenizer's ids depends on: kind, spec, vocab_size, eod_id,
        sha256 of the vocabulary file (None for byte, which has none)."""
        return {
            "kind": self.kind,
            "spec": self.spec,
            "vocab_size": self.vocab_size,
            "eod_id": self.eod_id,
            "sha256": self._sha256(),
        }

    def _sha256(self) -> str | None:
        return None


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, EOD = 256."""

    kind = "byte"

    def __init__(self) -> None:
        self.spec = "byte"
        self.vocab_size = 257
        self.eod_id = BYTE_EOD

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i != BYTE_EOD).decode("utf-8", errors="replace")


NEOX_20B_SOURCE = (
    "GPT-NeoX-20B's tokenizer (the README's 20B_tokenizer.json) is tokenizer.json of "
    "https://huggingface.co/EleutherAI/gpt-neox-20b; RWKV-LM ships it as RWKV-v4/20B_tokenizer.json: "
    "download it and pass its path"
)


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` JSON file."""

    kind = "hf"

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        if not os.path.isfile(path):
            where = NEOX_20B_SOURCE if "20b" in os.path.basename(path).lower() else "pass the path of one"
            raise FileNotFoundError(f"{path}: tokenizer JSON not found (spec 'hf:{path}'); {where}")
        self.path = path
        self.spec = f"hf:{path}"
        try:
            self._tok = RustTokenizer.from_file(path)
        except Exception as e:
            raise ValueError(f"{path}: not a Hugging Face tokenizer.json ({e})") from e
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eod_id = self._find_eod()

    def _find_eod(self) -> int:
        cfg = Path(self.path).with_name("tokenizer_config.json")
        names: list[str] = []
        if cfg.is_file():
            eos = json.loads(cfg.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str):
                names.append(eos)
        names.extend(HF_EOD_CANDIDATES)
        for name in names:
            i = self._tok.token_to_id(name)
            if i is not None:
                return i
        raise ValueError(f"{self.path}: no end-of-document token found (looked for {names})")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([i for i in ids if i != self.eod_id], skip_special_tokens=False)

    def _sha256(self) -> str:
        return file_sha256(self.path)


def official_rwkv_vocab() -> Path:
    """The RWKV World vocabulary file shipped by the installed `rwkv` pip package.

    Looked up through the distribution's metadata rather than `find_spec("rwkv")`, which finds the
    repository's own rwkv/ folder first when run from the repository root.
    """
    try:
        dist = importlib.metadata.distribution("rwkv")
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            "rwkv_world: the `rwkv` pip package is not installed; install it or pass "
            "'rwkv_world:<path to rwkv_vocab_v20230424.txt>'"
        ) from e
    path = Path(str(dist.locate_file(f"rwkv/{RWKV_WORLD_FILE}")))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed `rwkv` package has no {RWKV_WORLD_FILE}")
    return path


class RwkvWorldTokenizer(Tokenizer):
    """RWKV World vocabulary: greedy longest match over UTF-8 bytes.

    The vocabulary is a byte trie of nested dicts (byte -> child node; key -1 holds the id of the
    token ending at that node). From each position the walk follows the bytes as deep as the trie
    goes and emits the deepest token seen; every single byte is a token, so it always advances.
    """

    kind = "rwkv_world"

    def __init__(self, path: str | None = None) -> None:
        self.path = str(path) if path else str(official_rwkv_vocab())
        self.spec = f"rwkv_world:{path}" if path else "rwkv_world"
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: RWKV World vocabulary not found")
        self.id_to_bytes: dict[int, bytes] = {}
        self.bytes_to_id: dict[bytes, int] = {}
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                self._add_line(line.rstrip("\n"), lineno)
        missing = [b for b in range(256) if bytes([b]) not in self.bytes_to_id]
        if missing:
            raise ValueError(
                f"{self.path}: single bytes {missing[:8]} have no token; greedy matching needs all 256"
            )
        top = max(self.id_to_bytes)
        if top >= RWKV_WORLD_VOCAB_SIZE:
            raise ValueError(f"{self.path}: token id {top} >= {RWKV_WORLD_VOCAB_SIZE}")
        self.vocab_size = RWKV_WORLD_VOCAB_SIZE
        self.eod_id = RWKV_WORLD_EOD
        self._trie: dict[int, Any] = {}
        for tok, idx in self.bytes_to_id.items():
            node = self._trie
            for b in tok:
                node = node.setdefault(b, {})
            node[-1] = idx

    def _add_line(self, line: str, lineno: int) -> None:
        if not line.strip():
            return
        try:
            head, rest = line.split(" ", 1)
            literal, length = rest.rsplit(" ", 1)
            idx, n = int(head), int(length)
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError) as e:
            raise ValueError(
                f"{self.path}:{lineno}: expected '<id> <str or bytes literal> <length>' ({e})"
            ) from e
        tok = value.encode("utf-8") if isinstance(value, str) else value
        if not isinstance(tok, bytes) or len(tok) != n or n == 0:
            raise ValueError(f"{self.path}:{lineno}: token {value!r} does not have byte length {n}")
        if idx == RWKV_WORLD_EOD or idx in self.id_to_bytes or tok in self.bytes_to_id:
            raise ValueError(f"{self.path}:{lineno}: id {idx} or token {tok!r} is reserved or repeated")
        self.id_to_bytes[idx] = tok
        self.bytes_to_id[tok] = idx

    def unknown_ids(self, n: int) -> list[int]:
        return [i for i in range(n) if i != self.eod_id and i not in self.id_to_bytes]

    def encode_bytes(self, src: bytes) -> list[int]:
        """Greedy longest-match ids of a byte string."""
        root = self._trie
        out: list[int] = []
        i, n = 0, len(src)
        while i < n:
            node, j, best, end = root, i, -1, i
            while j < n:
                node = node.get(src[j])
                if node is None:
                    break
                j += 1
                tid = node.get(-1)
                if tid is not None:
                    best, end = tid, j
            out.append(best)
            i = end
        return out

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        parts = []
        for i in ids:
            if i == self.eod_id:
                continue
            if i not in self.id_to_bytes:
                raise ValueError(f"{self.path}: token id {i} is not in the vocabulary")
            parts.append(self.id_to_bytes[i])
        return b"".join(parts).decode("utf-8", errors="replace")

    def _sha256(self) -> str:
        return file_sha256(self.path)


def load_tokenizer(spec: str) -> Tokenizer:
    """Build a tokenizer from "byte", "hf:<tokenizer.json>" or "rwkv_world[:<vocab.txt>]"."""
    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("hf:"):
        return HFTokenizer(spec[3:])
    if spec == "rwkv_world":
        return RwkvWorldTokenizer()
    if spec.startswith("rwkv_world:"):
        return RwkvWorldTokenizer(spec[len("rwkv_world:") :])
    raise ValueError(
        f"tokenizer spec {spec!r}: expected 'byte', 'hf:<tokenizer.json>' or 'rwkv_world[:<vocab.txt>]'"
    )
