"""`skein generate`: the requested number of tokens, the same text for the same seed, RNN-mode
logits equal to the parallel form's, and sampling that honours temperature and top-p."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skein.train.commands.generate import generate, sample_next, sample_tokens
from tests.export.helpers import logits, save_skein_safetensors, tiny_model
from tests.utils import assert_close

PROMPT = [104, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]


@pytest.mark.parametrize("arch", ["rwkv4", "rwkv7", "deltaproduct", "llama"])
def test_rnn_steps_equal_the_parallel_form(arch: str) -> None:
    model = tiny_model(arch)
    new, used = sample_tokens(model, PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    assert len(new) == 12 and used.shape == (12, model.config.vocab_size)
    full = logits(model, torch.tensor([PROMPT + new[:-1]]))[0, len(PROMPT) - 1 :]
    assert_close(used, full, 1e-5, f"{arch} RNN-mode logits")


def test_same_seed_same_tokens() -> None:
    model = tiny_model("rwkv7")
    a, _ = sample_tokens(model, PROMPT, 20, 1.0, 0.95, seed=7)
    b, _ = sample_tokens(model, PROMPT, 20, 1.0, 0.95, seed=7)
    c, _ = sample_tokens(model, PROMPT, 20, 1.0, 0.95, seed=8)
    assert a == b and a != c


def test_temperature_zero_is_greedy() -> None:
    model = tiny_model("rwkv4")
    new, used = sample_tokens(model, PROMPT, 8, temperature=0.0, top_p=0.5, seed=0)
    assert new == used.argmax(-1).tolist()


def test_top_p_keeps_only_the_nucleus() -> None:
    logits_ = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    drawn = {sample_next(logits_, 1.0, 0.7, g) for _ in range(300)}
    assert drawn == {0, 1}
    drawn = {sample_next(logits_, 1.0, 1.0, g) for _ in range(2000)}
    assert drawn == {0, 1, 2, 3}
    assert {sample_next(logits_, 1.0, 0.3, g) for _ in range(50)} == {0}


def test_ids_without_text_are_never_drawn(tmp_path: Path) -> None:
    """A model whose vocabulary is padded past the tokenizer's (300 > 257 byte ids)."""
    model = tiny_model("rwkv7", std=1.0, vocab_size=300)
    padded = list(range(257, 300))
    free, _ = sample_tokens(model, PROMPT, 200, temperature=3.0, top_p=1.0, seed=0)
    assert any(t in padded for t in free), "the unbanned draw should reach the padded ids"
    new, used = sample_tokens(model, PROMPT, 200, temperature=3.0, top_p=1.0, seed=0, banned=padded)
    assert not any(t in padded for t in new) and torch.isinf(used[:, 257:]).all()
    source = str(save_skein_safetensors(model, tmp_path / "m.safetensors"))
    text = generate(source, "x", max_tokens=100, temperature=3.0, top_p=1.0, tokenizer="byte")
    assert len(text.encode("utf-8", errors="replace")) >= 50


def test_generate_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = str(save_skein_safetensors(tiny_model("rwkv4"), tmp_path / "m.safetensors"))
    text = generate(source, "def main(", max_tokens=30, tokenizer="byte", seed=1)
    assert capsys.readouterr().out.startswith("def main(" + text)
    assert text == generate(source, "def main(", max_tokens=30, tokenizer="byte", seed=1)
    assert text != generate(source, "def main(", max_tokens=30, tokenizer="byte", seed=2)
    assert len(text.encode("utf-8", errors="replace")) >= 10


def test_generate_arguments_are_checked(tmp_path: Path) -> None:
    source = str(save_skein_safetensors(tiny_model("rwkv4", vocab_size=100), tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="no tokenizer recorded"):
        generate(source, "x")
    with pytest.raises(ValueError, match="257 ids but the model's vocab_size is 100"):
        generate(source, "x", tokenizer="byte")
    with pytest.raises(ValueError, match="top_p"):
        generate(source, "x", top_p=0.0, tokenizer="byte")
    with pytest.raises(ValueError, match="temperature"):
        generate(source, "x", temperature=-1.0, tokenizer="byte")
    model = tiny_model("rwkv4", vocab_size=100)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 100\), got 98\.\.100"):
        sample_tokens(model, PROMPT[:3], 4, 1.0, 1.0, seed=0, banned=[100, 98])
    with pytest.raises(ValueError, match="every id"):
        sample_tokens(model, PROMPT[:3], 4, 1.0, 1.0, seed=0, banned=range(100))
