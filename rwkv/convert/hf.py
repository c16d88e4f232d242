"""RWKV-4 <-> Hugging Face transformers' RwkvForCausalLM (config.json + safetensors).

Key mapping (the one transformers' convert_rwkv_checkpoint_to_hf.py applies to RWKV-LM files):

    emb.weight          -> rwkv.embeddings.weight
    blocks.0.ln0.*      -> rwkv.blocks.0.pre_ln.*
    blocks.{i}.att.*    -> rwkv.blocks.{i}.attention.*      time_mix_k/v/r -> time_mix_key/value/receptance
    blocks.{i}.ffn.*    -> rwkv.blocks.{i}.feed_forward.*   time_mix_k/r   -> time_mix_key/receptance
    blocks.{i}.ln1/ln2  -> rwkv.blocks.{i}.ln1/ln2;  ln_out -> rwkv.ln_out;  head.weight -> head.weight

Shapes are unchanged (time_decay, time_first [C]; time_mix_* [1, 1, C]). RwkvConfig: hidden_size =
d_model, attention_hidden_size = d_model, intermediate_size = d_ffn, layer_norm_epsilon = norm_eps.
transformers builds ln_out with its default epsilon 1e-5 whatever layer_norm_epsilon says, so only
norm_eps = 1e-5 converts exactly. `rescale_every` halves the residual stream every that many blocks
at inference (with the output matrices scaled to match) to keep fp16 in range; 0 disables it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from skein.rwkv.convert.common import cpu_tensor, resolve_dtype
from skein.rwkv.convert.rwkv_lm import model_from_state_dict
from skein.rwkv.models import CausalLM

HF_LN_OUT_EPS = 1e-5
"""Epsilon of transformers' RwkvModel.ln_out (not configurable there)."""
HF_FP16_RESCALE_EVERY = 6
"""rescale_every written for fp16 exports (transformers' default); fp32/bf16 exports write 0."""
TIME_MIX = {"time_mix_k": "time_mix_key", "time_mix_v": "time_mix_value", "time_mix_r": "time_mix_receptance"}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _to_hf_key(name: str) -> str:
    if name == "head.weight":
        return name
    name = re.sub(r"^emb\.", "embeddings.", name)
    name = re.sub(r"^blocks\.0\.ln0\.", "blocks.0.pre_ln.", name)
    name = re.sub(r"^blocks\.(\d+)\.att\.", r"blocks.\1.attention.", name)
    name = re.sub(r"^blocks\.(\d+)\.ffn\.", r"blocks.\1.feed_forward.", name)
    last = name.rsplit(".", 1)
    if last[-1] in TIME_MIX:
        name = f"{last[0]}.{TIME_MIX[last[-1]]}"
    return "rwkv." + name


def _from_hf_key(name: str) -> str:
    if name == "head.weight":
        return name
    if not name.startswith("rwkv."):
        raise ValueError(f"key {name!r}: expected 'head.weight' or a 'rwkv.' prefix")
    name = name[len("rwkv.") :]
    name = re.sub(r"^embeddings\.", "emb.", name)
    name = re.sub(r"^blocks\.0\.pre_ln\.", "blocks.0.ln0.", name)
    name = re.sub(r"^blocks\.(\d+)\.attention\.", r"blocks.\1.att.", name)
    name = re.sub(r"^blocks\.(\d+)\.feed_forward\.", r"blocks.\1.ffn.", name)
    back = {v: k for k, v in TIME_MIX.items()}
    last = name.rsplit(".", 1)
    if last[-1] in back:
        name = f"{last[0]}.{back[last[-1]]}"
    return name


def hf_config(
    model: CausalLM, dtype: torch.dtype, rescale_every: int, context_length: int, eod_id: int
) -> dict[str, Any]:
    """config.json of RwkvForCausalLM for a skein RWKV-4 (see the module docstring)."""
    cfg = model.config
    return {
        "architectures": ["RwkvForCausalLM"],
        "model_type": "rwkv",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "attention_hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ffn,
        "layer_norm_epsilon": cfg.norm_eps,
        "context_length": context_length,
        "rescale_every": rescale_every,
        "bos_token_id": eod_id,
        "eos_token_id": eod_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "dtype": DTYPE_NAMES[dtype],
    }


def to_hf(
    model: CausalLM,
    dtype: str | torch.dtype = "fp32",
    rescale_every: int | None = None,
    context_length: int = 1024,
    eod_id: int = 0,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json dict, state dict) of RwkvForCausalLM for a skein RWKV-4.

    rescale_every None means HF_FP16_RESCALE_EVERY for fp16 and 0 otherwise; context_length is
    only what transformers' CUDA kernel is compiled for (RNN mode has no limit); eod_id becomes
    bos/eos_token_id.
    """
    cfg = model.config
    if cfg.arch != "rwkv4":
        raise ValueError(
            f"transformers' RwkvForCausalLM is RWKV-4; model.arch={cfg.arch} has no Hugging Face "
            "transformers layout here (RWKV-7 and DeltaProduct: use format 'fla')"
        )
    if not math.isclose(cfg.norm_eps, HF_LN_OUT_EPS, rel_tol=1e-9):
        raise ValueError(
            f"model.norm_eps={cfg.norm_eps}: transformers' RWKV ln_out always uses {HF_LN_OUT_EPS}, so the "
            "logits would differ; export to safetensors instead"
        )
    dt = resolve_dtype(dtype)
    if rescale_every is None:
        rescale_every = HF_FP16_RESCALE_EVERY if dt == torch.float16 else 0
    sd = {_to_hf_key(k): cpu_tensor(v, dt) for k, v in model.state_dict().items()}
    return hf_config(model, dt, rescale_every, context_length, eod_id), sd


def from_hf(config: dict[str, Any], sd: dict[str, Tensor], source: str = "Hugging Face RWKV") -> CausalLM:
    """A skein RWKV-4 from an RwkvForCausalLM config.json dict and state dict (strict load)."""
    if config.get("model_type") != "rwkv":
        raise ValueError(f"{source}: config model_type is {config.get('model_type')!r}, not 'rwkv'")
    C = config["hidden_size"]
    att = config.get("attention_hidden_size") or C
    if att != C:
        raise ValueError(f"{source}: attention_hidden_size={att} != hidden_size={C} is not supported")
    eps = config.get("layer_norm_epsilon", HF_LN_OUT_EPS)
    if not math.isclose(eps, HF_LN_OUT_EPS, rel_tol=1e-9):
        raise ValueError(
            f"{source}: layer_norm_epsilon={eps} differs from ln_out's fixed {HF_LN_OUT_EPS}; one model.norm_eps "
            "cannot hold both"
        )
    model_cfg = {
        "arch": "rwkv4",
        "vocab_size": config["vocab_size"],
        "n_layer": config["num_hidden_layers"],
        "d_model": C,
        "d_ffn": config.get("intermediate_size") or 4 * C,
        "norm_eps": eps,
    }
    return model_from_state_dict(model_cfg, {_from_hf_key(k): v for k, v in sd.items()}, source)


def read_hf(directory: str | Path) -> CausalLM:
    """Load a transformers RWKV-4 directory (config.json with model.safetensors, a sharded
    model.safetensors.index.json, or pytorch_model.bin)."""
    from safetensors.torch import load_file

    d = Path(directory)
    config = json.loads((d / "config.json").read_text())
    if (d / "model.safetensors").is_file():
        sd = load_file(str(d / "model.safetensors"))
    elif (d / "model.safetensors.index.json").is_file():
        index = json.loads((d / "model.safetensors.index.json").read_text())
        sd = {}
        for shard in sorted(set(index["weight_map"].values())):
            sd.update(load_file(str(d / shard)))
    elif (d / "pytorch_model.bin").is_file():
        sd = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(
            f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
        )
    return from_hf(config, sd, str(d))
