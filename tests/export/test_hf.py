"""transformers' RwkvForCausalLM loads skein's RWKV-4 `hf` export with the same logits (whole
sequence and RNN mode), and a transformers RWKV-4 directory loads back into skein."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skein.rwkv.convert import read_hf, to_hf
from skein.train.commands.export import export
from tests.export.helpers import logits, save_skein_safetensors, tiny_model
from tests.models.harness import random_tokens
from tests.utils import assert_close

MAX_ABS = 1e-3


def test_transformers_loads_hf_export(tmp_path: Path) -> None:
    from transformers import RwkvForCausalLM

    model = tiny_model("rwkv4")
    source = save_skein_safetensors(model, tmp_path / "model.safetensors")
    out = export(str(source), str(tmp_path / "hf"), format="hf")
    hf = RwkvForCausalLM.from_pretrained(out).eval()
    idx = random_tokens(model.config.vocab_size, B=2, T=40, seed=7)
    ours = logits(model, idx)
    with torch.no_grad():
        theirs = hf(idx).logits
        # RNN mode one sequence at a time: transformers' one-token path broadcasts the shift state
        # [B, C] against [B, 1, C] and returns [B, B, V] logits for B > 1.
        state, steps = None, []
        for t in range(idx.shape[1]):
            res = hf(idx[:1, t : t + 1], state=state, use_cache=True)
            state = res.state
            steps.append(res.logits)
    assert ours.abs().max() > 1.0
    assert (theirs - ours).abs().max().item() < MAX_ABS
    assert (torch.cat(steps, 1) - ours[:1]).abs().max().item() < MAX_ABS


def test_hf_directory_round_trip(tmp_path: Path) -> None:
    model = tiny_model("rwkv4", d_ffn=96)
    source = save_skein_safetensors(model, tmp_path / "model.safetensors")
    out = export(str(source), str(tmp_path / "hf"), format="hf", dtype="fp32")
    back = read_hf(out)
    assert back.config.d_ffn == 96
    idx = random_tokens(model.config.vocab_size, B=1, T=25, seed=8)
    assert torch.equal(logits(back, idx), logits(model, idx))


def test_hf_fp16_export_sets_rescale_and_dtype() -> None:
    config, sd = to_hf(tiny_model("rwkv4"), "fp16")
    assert config["rescale_every"] == 6 and config["dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert "rwkv.blocks.0.pre_ln.weight" in sd and "rwkv.blocks.1.attention.time_mix_key" in sd
    assert "rwkv.blocks.0.feed_forward.time_mix_receptance" in sd and "head.weight" in sd


@pytest.mark.parametrize(
    ("arch", "fields", "message"),
    [
        ("rwkv7", {}, "RWKV-4"),
        ("rwkv4", {"norm_eps": 1e-6}, "model.norm_eps"),
    ],
)
def test_hf_export_refuses_what_transformers_cannot_reproduce(arch: str, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_hf(tiny_model(arch, **fields))


def test_bf16_hf_export_is_the_rounded_model(tmp_path: Path) -> None:
    from transformers import RwkvForCausalLM

    model = tiny_model("rwkv4")
    source = save_skein_safetensors(model, tmp_path / "model.safetensors")
    hf = RwkvForCausalLM.from_pretrained(export(str(source), str(tmp_path / "hf"), format="hf", dtype="bf16"))
    idx = random_tokens(model.config.vocab_size, B=1, T=16, seed=9)
    with torch.no_grad():
        theirs = hf.float()(idx).logits
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    assert_close(theirs, logits(model, idx), 1e-4, "bf16 export logits")
