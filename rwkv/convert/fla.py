"""skein RWKV-7 and DeltaProduct -> flash-linear-attention's RWKV7ForCausalLM and
GatedDeltaProductForCausalLM (fla 0.6.0 layouts; config.json + state dict).

RWKV-7 (the mapping of fla's utils/convert_from_rwkv7.py), per block i:

    blocks.i.ln0/ln1/ln2        -> model.layers.i.pre_norm / attn_norm / ffn_norm
    att.x_r .. att.x_g [1,1,C]  -> attn.x_r .. attn.x_g [1,1,C]
    att.{w,a,v}1 [C,R]          -> attn.{w,a,v}_lora.lora.0.weight [R,C]  (transposed)
    att.{w,a,v}2 [R,C]          -> attn.{w,a,v}_lora.lora.2.weight [C,R]  (transposed)
    att.{w,a,v}0 [1,1,C]        -> attn.{w,a,v}_lora.lora.2.bias [C]
    att.g1, att.g2              -> attn.g_lora.lora.0.weight, lora.2.weight (transposed, no bias)
    att.k_k, att.k_a [1,1,C]    -> attn.k_k, attn.k_a [C];  att.r_k [H,N] -> attn.r_k
    att.receptance/key/value/output -> attn.r_proj/k_proj/v_proj/o_proj;  att.ln_x -> attn.g_norm
    ffn.x_k [1,1,C]             -> ffn.x_k [C];  ffn.key/value -> ffn.key/value
    emb -> model.embeddings;  ln_out -> model.norm;  head -> lm_head

fla sets the GroupNorm epsilon to head_dim * norm_eps, so the export is exact only when
ln_x_eps = head_size * norm_eps (RWKV-LM's 64e-5 with head size 64); other configs are refused.

DeltaProduct maps one to one onto GatedDeltaProduct (same feature order (n_h, head, K) in k_proj
and v_proj, (n_h, head) in b_proj, gate applied once per token before the Householder steps,
per-head RMSNorm gated by silu(g_proj), SwiGLU MLP):

    blocks.i.ln1 / ln2          -> model.layers.i.attn_norm / mlp_norm
    mixer.{q,k,v,b,a,g,o}_proj  -> attn.{q,k,v,b,a,g,o}_proj;  mixer.A_log, dt_bias -> attn.A_log, dt_bias
    mixer.{q,k,v}_conv.weight   -> attn.{q,k,v}_conv1d.weight [channels, 1, conv_size]
    mixer.o_norm [V]            -> attn.o_norm.weight
    ffn.gate_up [2F, C]         -> mlp.gate_proj (rows :F), mlp.up_proj (rows F:);  ffn.down -> mlp.down_proj
    emb -> model.embeddings;  ln_out -> model.norm;  head -> lm_head

with num_heads = n_head, head_dim = head_k_dim, expand_v = head_v_dim / head_k_dim,
use_forget_gate = use_gate. fla L2-normalises q and k with epsilon 1e-6 inside its kernel, so the
export is exact only for qk_norm_eps = 1e-6.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from skein.rwkv.convert.common import cpu_tensor, resolve_dtype
from skein.rwkv.convert.hf import DTYPE_NAMES
from skein.rwkv.models import CausalLM

FLA_L2NORM_EPS = 1e-6
"""Epsilon of fla's in-kernel q/k L2 normalisation (use_qk_l2norm_in_kernel)."""
RWKV7_LORAS = ("w", "a", "v", "g")
RWKV7_PROJ = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj"}


def _rwkv7_key(name: str, value: Tensor) -> tuple[str, Tensor]:
    """fla name and tensor of one skein RWKV-7 tensor."""
    top = {"emb.weight": "model.embeddings.weight", "head.weight": "lm_head.weight"}
    if name in top:
        return top[name], value
    if name.startswith("ln_out."):
        return "model.norm." + name.split(".", 1)[1], value
    _, i, part, rest = name.split(".", 3)
    prefix = f"model.layers.{i}."
    norms = {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
    if part in norms:
        return f"{prefix}{norms[part]}.{rest}", value
    if part == "ffn":
        return f"{prefix}ffn.{rest}", value.reshape(-1) if rest == "x_k" else value
    head = rest.split(".")[0]
    if len(head) == 2 and head[0] in RWKV7_LORAS and head[1] in "012":
        kind, num = head
        if num == "0":
            return f"{prefix}attn.{kind}_lora.lora.2.bias", value.reshape(-1)
        slot = "0" if num == "1" else "2"
        return f"{prefix}attn.{kind}_lora.lora.{slot}.weight", value.t().contiguous()
    if head in ("k_k", "k_a"):
        return f"{prefix}attn.{head}", value.reshape(-1)
    if head in RWKV7_PROJ:
        return f"{prefix}attn.{RWKV7_PROJ[head]}.{rest.split('.', 1)[1]}", value
    if head == "ln_x":
        return f"{prefix}attn.g_norm.{rest.split('.', 1)[1]}", value
    return f"{prefix}attn.{rest}", value


def fla_rwkv7_config(model: CausalLM, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of fla's RWKV7ForCausalLM for a skein RWKV-7."""
    cfg = model.config
    C = cfg.d_model
    return {
        "architectures": ["RWKV7ForCausalLM"],
        "model_type": "rwkv7",
        "attn_mode": "chunk",
        "vocab_size": cfg.vocab_size,
        "hidden_size": C,
        "num_hidden_layers": cfg.n_layer,
        "head_dim": cfg.head_size,
        "num_heads": cfg.n_head,
        "decay_low_rank_dim": cfg.decay_lora,
        "a_low_rank_dim": cfg.iclr_lora,
        "v_low_rank_dim": cfg.value_lora,
        "gate_low_rank_dim": cfg.gate_lora,
        "intermediate_size": cfg.d_ffn,
        "hidden_ratio": cfg.d_ffn / C,
        "hidden_act": "sqrelu",
        "value_dim": [C] * cfg.n_layer,
        "norm_first": True,
        "norm_bias": True,
        "norm_eps": cfg.norm_eps,
        "fuse_norm": True,
        "tie_word_embeddings": False,
        "use_cache": True,
        "dtype": DTYPE_NAMES[dtype],
    }


def _deltaproduct_tensors(name: str, value: Tensor, d_ffn: int) -> list[tuple[str, Tensor]]:
    """fla names and tensors of one skein DeltaProduct tensor (gate_up splits in two)."""
    top = {
        "emb.weight": "model.embeddings.weight",
        "head.weight": "lm_head.weight",
        "ln_out.weight": "model.norm.weight",
    }
    if name in top:
        return [(top[name], value)]
    _, i, part, rest = name.split(".", 3)
    prefix = f"model.layers.{i}."
    if part in ("ln1", "ln2"):
        return [(f"{prefix}{'attn_norm' if part == 'ln1' else 'mlp_norm'}.{rest}", value)]
    if part == "ffn":
        if rest == "gate_up.weight":
            return [
                (f"{prefix}mlp.gate_proj.weight", value[:d_ffn]),
                (f"{prefix}mlp.up_proj.weight", value[d_ffn:]),
            ]
        return [(f"{prefix}mlp.down_proj.weight", value)]
    convs = {
        "q_conv.weight": "q_conv1d.weight",
        "k_conv.weight": "k_conv1d.weight",
        "v_conv.weight": "v_conv1d.weight",
    }
    if rest in convs:
        return [(f"{prefix}attn.{convs[rest]}", value)]
    if rest == "o_norm":
        return [(f"{prefix}attn.o_norm.weight", value)]
    return [(f"{prefix}attn.{rest}", value)]


def fla_deltaproduct_config(model: CausalLM, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of fla's GatedDeltaProductForCausalLM for a skein DeltaProduct."""
    cfg = model.config
    return {
        "architectures": ["GatedDeltaProductForCausalLM"],
        "model_type": "gated_deltaproduct",
        "attn_mode": "chunk",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_heads": cfg.n_head,
        "head_dim": cfg.head_k_dim,
        "expand_v": cfg.head_v_dim / cfg.head_k_dim,
        "num_householder": cfg.n_householder,
        "allow_neg_eigval": cfg.allow_neg_eigval,
        "use_forget_gate": cfg.use_gate,
        "use_short_conv": cfg.use_short_conv,
        "conv_size": cfg.conv_size,
        "use_output_gate": cfg.use_output_gate,
        "intermediate_size": cfg.d_ffn,
        "hidden_act": "swish",
        "norm_eps": cfg.norm_eps,
        "fuse_norm": True,
        "fuse_swiglu": True,
        "tie_word_embeddings": False,
        "use_cache": True,
        "dtype": DTYPE_NAMES[dtype],
    }


def check_fla_config(model: CausalLM) -> None:
    """Refuse a config fla's model cannot reproduce exactly, naming the field."""
    cfg = model.config
    if cfg.arch == "rwkv7":
        want = cfg.head_size * cfg.norm_eps
        if not math.isclose(cfg.ln_x_eps, want, rel_tol=1e-9):
            raise ValueError(
                f"model.ln_x_eps={cfg.ln_x_eps}: fla's RWKV-7 GroupNorm uses head_size * norm_eps = {want}; "
                "export to rwkv_lm or safetensors instead"
            )
    elif cfg.arch == "deltaproduct":
        if not math.isclose(cfg.qk_norm_eps, FLA_L2NORM_EPS, rel_tol=1e-9):
            raise ValueError(
                f"model.qk_norm_eps={cfg.qk_norm_eps}: fla's kernel L2-normalises q and k with {FLA_L2NORM_EPS}"
            )
        if int(cfg.head_k_dim * (cfg.head_v_dim / cfg.head_k_dim)) != cfg.head_v_dim:
            raise ValueError(
                f"model.head_v_dim={cfg.head_v_dim}: fla derives it as int(head_dim * expand_v) from "
                f"head_k_dim={cfg.head_k_dim}, which rounds to another value"
            )
    else:
        raise ValueError(
            f"fla export covers rwkv7 and deltaproduct, not model.arch={cfg.arch}"
            + (" (RWKV-4: use format 'hf' or 'rwkv_lm')" if cfg.arch == "rwkv4" else "")
        )


def to_fla(model: CausalLM, dtype: str | torch.dtype = "fp32") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json dict, state dict) of fla's RWKV7ForCausalLM or GatedDeltaProductForCausalLM."""
    check_fla_config(model)
    dt = resolve_dtype(dtype)
    sd: dict[str, Tensor] = {}
    if model.config.arch == "rwkv7":
        for k, v in model.state_dict().items():
            name, t = _rwkv7_key(k, v)
            sd[name] = cpu_tensor(t, dt)
        return fla_rwkv7_config(model, dt), sd
    for k, v in model.state_dict().items():
        for name, t in _deltaproduct_tensors(k, v, model.config.d_ffn):
            sd[name] = cpu_tensor(t, dt)
    return fla_deltaproduct_config(model, dt), sd
