"""RWKV-LM .pth export and import: identical logits through export -> import, configs inferred
from the shapes, the published layout variants, and errors that name the offending key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from skein.rwkv import build_model
from skein.rwkv.convert import from_rwkv_lm, infer_config, load_strict, read_safetensors, to_rwkv_lm
from skein.rwkv.convert.rwkv_lm import detect_arch, fit_layout
from skein.train.checkpoints.checkpoint import load_weights
from skein.train.commands.export import export, import_weights, load_source
from tests.export.helpers import TINY, logits, save_skein_safetensors, tiny_model
from tests.models.harness import random_tokens


@pytest.mark.parametrize("arch", ["rwkv4", "rwkv7"])
def test_export_then_import_gives_identical_logits(arch: str, tmp_path: Path) -> None:
    model = tiny_model(arch)
    source = save_skein_safetensors(model, tmp_path / "model.safetensors")
    pth = export(str(source), str(tmp_path / "rwkv_lm.pth"))
    weights = import_weights(pth, str(tmp_path / "imported" / "model.pth"), tokenizer="byte")
    idx = random_tokens(model.config.vocab_size, B=2, T=33, seed=3)
    back = load_source(weights)
    assert all(p.device.type == "cpu" and p.requires_grad for p in back.model.parameters())
    assert torch.equal(logits(back.model, idx), logits(model, idx))
    assert back.tokenizer_spec() == "byte"
    run_cfg = yaml.safe_load(Path(weights).with_suffix(".yaml").read_text())
    assert run_cfg["model"]["arch"] == arch and run_cfg["data"]["tokenizer"] == "byte"
    fresh = build_model(run_cfg["model"])  # what `skein train --init_from` does with the run's model config
    load_strict(fresh, fit_layout(load_weights(weights), fresh), weights)
    assert torch.equal(logits(fresh.eval(), idx), logits(model, idx))


def test_bf16_export_holds_the_rounded_weights(tmp_path: Path) -> None:
    model = tiny_model("rwkv7")
    source = save_skein_safetensors(model, tmp_path / "model.safetensors")
    pth = export(str(source), str(tmp_path / "bf16.pth"), dtype="bf16")
    sd = torch.load(pth)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    idx = random_tokens(model.config.vocab_size, B=1, T=20, seed=4)
    assert torch.equal(logits(load_source(pth).model, idx), logits(model, idx))


def test_infer_config_reads_every_size_from_the_shapes() -> None:
    fields = {
        "d_ffn": 96,
        "decay_lora": 32,
        "iclr_lora": 64,
        "value_lora": 96,
        "gate_lora": 128,
        "head_size": 32,
    }
    cfg = infer_config(to_rwkv_lm(tiny_model("rwkv7", **fields)))
    assert cfg.arch == "rwkv7" and (cfg.n_layer, cfg.d_model, cfg.vocab_size) == (3, 64, 257)
    assert {k: getattr(cfg, k) for k in fields} == fields
    cfg4 = infer_config(to_rwkv_lm(tiny_model("rwkv4", d_ffn=160, n_layer=3)))
    assert (cfg4.arch, cfg4.n_layer, cfg4.d_ffn) == ("rwkv4", 3, 160)


@pytest.mark.parametrize("arch", ["rwkv4", "rwkv7"])
def test_squeezed_tensors_load(arch: str) -> None:
    """ChatRWKV-style files store the [1, 1, C] mixing vectors as [C]."""
    model = tiny_model(arch)
    sd = {k: v.squeeze() if v.dim() == 3 else v for k, v in to_rwkv_lm(model).items()}
    assert sd["blocks.0.ffn.time_mix_k" if arch == "rwkv4" else "blocks.0.ffn.x_k"].shape == (64,)
    idx = random_tokens(model.config.vocab_size, B=1, T=12, seed=5)
    assert torch.equal(logits(from_rwkv_lm(sd).eval(), idx), logits(model, idx))


def test_rwkv7_unused_block0_value_lora_is_written_and_dropped() -> None:
    model = tiny_model("rwkv7")
    with_unused = to_rwkv_lm(model)
    assert with_unused["blocks.0.att.v1"].shape == with_unused["blocks.1.att.v1"].shape
    without = to_rwkv_lm(model, unused_block0=False)
    assert sorted(set(with_unused) - set(without)) == [
        "blocks.0.att.v0",
        "blocks.0.att.v1",
        "blocks.0.att.v2",
    ]
    idx = random_tokens(model.config.vocab_size, B=1, T=12, seed=6)
    for sd in (with_unused, without):
        assert torch.equal(logits(from_rwkv_lm(sd).eval(), idx), logits(model, idx))


def test_safetensors_round_trip_keeps_every_config_field(tmp_path: Path) -> None:
    cases = {
        "rwkv4": {"norm_eps": 1e-6},
        "rwkv7": {"ln_x_eps": 1e-4, "norm_eps": 2e-5},
        "deltaproduct": {"n_householder": 3, "use_gate": False},
        "llama": {},
    }
    for arch, fields in cases.items():
        model = tiny_model(arch, **fields)
        out = export(
            str(save_skein_safetensors(model, tmp_path / f"{arch}-src.safetensors")),
            str(tmp_path / f"{arch}.safetensors"),
            format="safetensors",
        )
        back = read_safetensors(out)
        assert json.loads(json.dumps(back.config.to_dict())) == json.loads(json.dumps(model.config.to_dict()))
        idx = random_tokens(model.config.vocab_size, B=1, T=10, seed=7)
        assert torch.equal(logits(back.eval(), idx), logits(model, idx)), arch


def test_wrong_architecture_for_the_file_is_named() -> None:
    sd = to_rwkv_lm(tiny_model("rwkv7"))
    with pytest.raises(
        ValueError, match=r"holds an rwkv7 model \(key 'blocks.0.att.r_k'\).*model.arch is rwkv4"
    ):
        from_rwkv_lm(sd, config=TINY["rwkv4"])


def test_missing_unexpected_and_misshaped_keys_are_named() -> None:
    sd = to_rwkv_lm(tiny_model("rwkv7"))
    bad = dict(sd)
    del bad["blocks.1.ffn.value.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.ffn.value.weight'\]"):
        from_rwkv_lm(bad)
    bad = {**sd, "blocks.1.att.time_state": torch.randn(4, 16, 16)}
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks.1.att.time_state'\]"):
        from_rwkv_lm(bad)
    bad = {**sd, "blocks.2.att.a2": torch.randn(32, 65)}
    with pytest.raises(
        ValueError, match=r"blocks.2.att.a2: \(32, 65\) in the file vs \(32, 64\) in the model"
    ):
        from_rwkv_lm(bad)
    sd4 = to_rwkv_lm(tiny_model("rwkv4"))
    with pytest.raises(ValueError, match="'blocks.0.att.key.weight' has shape"):
        from_rwkv_lm({**sd4, "blocks.0.att.key.weight": torch.randn(32, 64)})


def test_failed_load_leaves_the_model_untouched() -> None:
    model = tiny_model("rwkv4")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = {k: torch.randn_like(v) for k, v in before.items()}
    sd["blocks.0.ffn.key.weight"] = torch.randn(10, 64)
    with pytest.raises(ValueError, match="blocks.0.ffn.key.weight"):
        load_strict(model, sd, "test")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"blocks.0.att.time_maa_x": torch.randn(1, 1, 64)}, "'blocks.0.att.time_maa_x': an RWKV-6 file"),
        ({"blocks.0.att.ln_x.weight": torch.randn(64)}, "'blocks.0.att.ln_x.weight'.*RWKV-5"),
        ({"_strategy": "cpu fp32"}, "'_strategy'"),
    ],
)
def test_other_rwkv_versions_are_named(extra: dict, message: str) -> None:
    sd = {k: v for k, v in to_rwkv_lm(tiny_model("rwkv4")).items() if "time_first" not in k}
    with pytest.raises(ValueError, match=message):
        detect_arch({**sd, **extra})


def test_non_rwkv_state_dict_is_refused() -> None:
    sd = tiny_model("deltaproduct").state_dict()
    with pytest.raises(ValueError, match="neither RWKV-4 .*'blocks.0.att.time_first'.* nor RWKV-7"):
        from_rwkv_lm(sd)


@pytest.mark.parametrize(
    ("arch", "fields", "message"),
    [
        ("rwkv4", {"norm_eps": 1e-6}, "model.norm_eps=1e-06"),
        ("rwkv7", {"ln_x_eps": 1e-4}, "model.ln_x_eps=0.0001"),
        ("deltaproduct", {}, "not model.arch=deltaproduct"),
    ],
)
def test_rwkv_lm_export_refuses_what_the_format_cannot_carry(arch: str, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_rwkv_lm(tiny_model(arch, **fields))


def test_export_arguments_are_checked(tmp_path: Path) -> None:
    source = str(save_skein_safetensors(tiny_model("rwkv4"), tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="format 'onnx'"):
        export(source, str(tmp_path / "x.pth"), format="onnx")
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        export(source, str(tmp_path / "x.pth"), dtype="fp8")
    with pytest.raises(ValueError, match=r"\*.pth"):
        export(source, str(tmp_path / "x.bin"))
    with pytest.raises(ValueError, match="fla export covers rwkv7 and deltaproduct"):
        export(source, str(tmp_path / "fla"), format="fla")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        export(str(tmp_path / "nowhere.pth"), str(tmp_path / "x.pth"))
    assert not list(tmp_path.glob("*.tmp"))
