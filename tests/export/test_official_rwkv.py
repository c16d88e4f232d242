"""The official `rwkv` pip package (ChatRWKV's inference code) loads skein's RWKV-LM exports and
computes the same next-token logits as skein, over the whole sequence and token by token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skein.rwkv.convert import to_rwkv_lm
from skein.train.commands.export import export
from tests.export.helpers import logits, run_official, save_skein_safetensors, tiny_model
from tests.models.harness import random_tokens

MAX_ABS = 1e-3


@pytest.mark.parametrize("arch", ["rwkv4", "rwkv7"])
def test_official_package_matches_export(arch: str, tmp_path: Path) -> None:
    model = tiny_model(arch)
    source = save_skein_safetensors(model, tmp_path / "model.safetensors")
    pth = Path(export(str(source), str(tmp_path / "export.pth"), format="rwkv_lm", dtype="fp32"))
    tokens = random_tokens(model.config.vocab_size, B=1, T=70, seed=5)
    ours = logits(model, tokens)[0]
    theirs = run_official(arch, pth, tokens[0].tolist(), tmp_path)
    assert ours.abs().max() > 1.0, "logits too flat for the comparison to mean anything"
    for mode in ("seq", "rnn"):
        diff = (theirs[mode] - ours).abs().max().item()
        assert diff < MAX_ABS, f"{arch} {mode}: max |official - skein| = {diff:.2e}"


def test_official_package_reads_rwkv7_without_unused_block0_tensors(tmp_path: Path) -> None:
    model = tiny_model("rwkv7", n_layer=2)
    sd = to_rwkv_lm(model, unused_block0=False)
    assert "blocks.0.att.v0" not in sd and "blocks.1.att.v0" in sd
    torch.save(sd, tmp_path / "bare.pth")
    tokens = random_tokens(model.config.vocab_size, B=1, T=20, seed=6)
    theirs = run_official("rwkv7", tmp_path / "bare.pth", tokens[0].tolist(), tmp_path)
    diff = (theirs["seq"] - logits(model, tokens)[0]).abs().max().item()
    assert diff < MAX_ABS, f"max |official - skein| = {diff:.2e}"
