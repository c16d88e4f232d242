"""RWKV-LM .pth state dicts <-> skein models.

skein's RWKV-4 and RWKV-7 use RWKV-LM's parameter names and shapes (RWKV-4: RWKV-v4neo; RWKV-7:
x070 train_temp), so a state dict converts by name. This module infers the model config from the
tensor shapes, loads strictly, and absorbs the published variants:

- tensors saved with different singleton dims, e.g. time_mix_k as [C] instead of [1, 1, C], or
  k_k / x_r as [C] (ChatRWKV-style squeezed files): reshaped to the model's shape;
- RWKV-7 files with blocks.0.att.v0/v1/v2: RWKV-LM creates the value-residual LoRA on every block,
  but block 0 never uses it (it produces v_first); skein has none there, so they are dropped on
  import. Exports write them back (v0 = 1, v1 = v2 = 0) so RWKV-LM's trainer loads the file
  strictly; the `rwkv` pip package and fla's converter ignore them.

Files this refuses, naming the key: RWKV-5/6 (att.ln_x without att.r_k, att.time_maa_*), files
converted by the `rwkv` package for one inference strategy (`_strategy`), and anything else.

The format has no place for the LayerNorm/GroupNorm epsilons: every RWKV-LM tool uses 1e-5 for the
LayerNorms and 64e-5 for RWKV-7's ln_x, so `to_rwkv_lm` refuses a config with other values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from skein.rwkv.convert.common import cpu_tensor, load_strict, resolve_dtype
from skein.rwkv.models import CausalLM, ModelConfig, build_model, model_config_from_dict

ARCHS = ("rwkv4", "rwkv7")
RWKV_LM_NORM_EPS = 1e-5
"""LayerNorm epsilon of every RWKV-LM tool (nn.LayerNorm / F.layer_norm default)."""
RWKV_LM_LN_X_EPS = 64e-5
"""RWKV-7 ln_x (GroupNorm) epsilon in RWKV-LM x070 and the `rwkv` package."""
UNUSED_BLOCK0 = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")
"""RWKV-7 tensors RWKV-LM creates on block 0 that the model never reads."""


def detect_arch(sd: dict[str, Tensor]) -> str:
    """The architecture of an RWKV-LM state dict, "rwkv4" or "rwkv7", from its keys; otherwise a
    ValueError naming the key that decided."""
    if "_strategy" in sd:
        raise ValueError(
            f"this file was converted by the `rwkv` package for strategy {sd['_strategy']!r} (key '_strategy'); "
            "use the original training checkpoint"
        )
    if "emb.weight" not in sd:
        raise ValueError("not an RWKV-LM state dict: key 'emb.weight' is missing")
    if "blocks.0.att.r_k" in sd:
        return "rwkv7"
    for k in sd:
        if ".att.time_maa" in k:
            raise ValueError(f"key {k!r}: an RWKV-6 file; only RWKV-4 and RWKV-7 are supported")
        if ".att.ln_x." in k:
            raise ValueError(
                f"key {k!r} without 'blocks.0.att.r_k': an RWKV-5 file; only RWKV-4 and RWKV-7 are supported"
            )
    if "blocks.0.att.time_first" in sd and "blocks.0.att.time_mix_k" in sd:
        return "rwkv4"
    raise ValueError(
        "neither RWKV-4 (needs keys 'blocks.0.att.time_first', 'blocks.0.att.time_mix_k') nor RWKV-7 "
        "(needs key 'blocks.0.att.r_k')"
    )


def _shape(sd: dict[str, Tensor], key: str, arch: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"{arch} state dict lacks key {key!r}")
    return tuple(sd[key].shape)


def _n_layer(sd: dict[str, Tensor]) -> int:
    ids = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not ids:
        raise ValueError("no 'blocks.{i}.*' keys")
    absent = sorted(set(range(max(ids) + 1)) - ids)
    if absent:
        raise ValueError(f"blocks {absent} have no keys (found 'blocks.{max(ids)}.*')")
    return max(ids) + 1


def infer_config(sd: dict[str, Tensor], **overrides: Any) -> ModelConfig:
    """The model config an RWKV-LM state dict describes: architecture from the keys; n_layer,
    d_model, vocab_size, d_ffn, head_size and the LoRA ranks from the shapes. `overrides` set other
    fields (e.g. kernel)."""
    arch = detect_arch(sd)
    vocab, C = _shape(sd, "emb.weight", arch)
    d: dict[str, Any] = {"arch": arch, "vocab_size": vocab, "d_model": C, "n_layer": _n_layer(sd)}
    d["d_ffn"] = _shape(sd, "blocks.0.ffn.key.weight", arch)[0]
    if arch == "rwkv4":
        att = _shape(sd, "blocks.0.att.key.weight", arch)
        if att != (C, C):
            raise ValueError(
                f"key 'blocks.0.att.key.weight' has shape {att}: an attention width other than d_model={C} "
                "(RWKV-LM dim_att) is not supported"
            )
    else:
        H, N = _shape(sd, "blocks.0.att.r_k", arch)
        if H * N != C:
            raise ValueError(f"key 'blocks.0.att.r_k' has shape {(H, N)}: heads * head_size != d_model={C}")
        d["head_size"] = N
        d["decay_lora"] = _shape(sd, "blocks.0.att.w1", arch)[1]
        d["iclr_lora"] = _shape(sd, "blocks.0.att.a1", arch)[1]
        d["gate_lora"] = _shape(sd, "blocks.0.att.g1", arch)[1]
        for key in ("blocks.1.att.v1", "blocks.0.att.v1"):
            if key in sd:
                d["value_lora"] = sd[key].shape[1]
                break
    d.update(overrides)
    return model_config_from_dict(d)


def fit_layout(sd: dict[str, Tensor], model: CausalLM) -> dict[str, Tensor]:
    """A copy of `sd` in the model's layout: RWKV-7's unused block-0 v0/v1/v2 dropped, tensors
    that differ from the model's only by singleton dims reshaped. Anything else is left for the
    strict load to report."""
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if model.config.arch == "rwkv7" and k in UNUSED_BLOCK0 and k not in own:
            continue
        if k in own and v.shape != own[k].shape and _squeezed(v.shape) == _squeezed(own[k].shape):
            v = v.reshape(own[k].shape)
        out[k] = v
    return out


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    return tuple(n for n in shape if n != 1)


def model_from_state_dict(
    config: ModelConfig | dict[str, Any], sd: dict[str, Tensor], source: str
) -> CausalLM:
    """Build the model of `config` and load `sd` strictly. For RWKV-4/7 the published layout
    variants are absorbed first, and a file of the other RWKV architecture is named as such.

    The model is built on the meta device (no initialisation work, which for billions of weights
    takes minutes) and takes `sd`'s tensors as its parameters (cast to float32 where they differ;
    tensors already float32 are shared with `sd`, not copied)."""
    if isinstance(config, dict):
        config = model_config_from_dict(config)
    with torch.device("meta"):
        model = build_model(config)
    if config.arch in ARCHS:
        try:
            found = detect_arch(sd)
        except ValueError:
            found = None
        if found is not None and found != config.arch:
            key = "blocks.0.att.r_k" if found == "rwkv7" else "blocks.0.att.time_first"
            raise ValueError(
                f"{source} holds an {found} model (key {key!r}), but model.arch is {config.arch}"
            )
        sd = fit_layout(sd, model)
    return load_strict(model, sd, source, assign=True)


def from_rwkv_lm(
    sd: dict[str, Tensor], config: ModelConfig | dict[str, Any] | None = None, source: str = "state dict"
) -> CausalLM:
    """A skein model holding an RWKV-LM state dict; the config is inferred from the tensors unless
    given. Strict: missing, unexpected or mis-shaped keys raise a ValueError naming them."""
    if config is None:
        try:
            config = infer_config(sd)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e
    if isinstance(config, dict):
        config = model_config_from_dict(config)
    if config.arch not in ARCHS:
        raise ValueError(f"the RWKV-LM format holds {ARCHS}, not model.arch={config.arch}")
    return model_from_state_dict(config, sd, source)


def check_format_config(config: ModelConfig) -> None:
    """Refuse a config the RWKV-LM format cannot carry (architecture, epsilons), naming the field."""
    if config.arch not in ARCHS:
        raise ValueError(f"the RWKV-LM format holds {ARCHS}, not model.arch={config.arch}")
    fixed = {"norm_eps": RWKV_LM_NORM_EPS}
    if config.arch == "rwkv7":
        fixed["ln_x_eps"] = RWKV_LM_LN_X_EPS
    for name, value in fixed.items():
        if not math.isclose(getattr(config, name), value, rel_tol=1e-9):
            raise ValueError(
                f"model.{name}={getattr(config, name)}: RWKV-LM tools use {value} and the .pth has no place to "
                "record another value; export to safetensors instead"
            )


def to_rwkv_lm(
    model: CausalLM, dtype: str | torch.dtype = "fp32", unused_block0: bool = True
) -> dict[str, Tensor]:
    """The model's weights as an RWKV-LM state dict on the CPU (floating tensors in `dtype`:
    fp32, bf16 or fp16). With unused_block0, an RWKV-7 dict also gets blocks.0.att.v0/v1/v2
    (v0 = 1, v1 = v2 = 0; never read), which RWKV-LM's trainer expects on every block."""
    cfg = model.config
    check_format_config(cfg)
    dt = resolve_dtype(dtype)
    out: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        out[k] = cpu_tensor(v, dt)
        if unused_block0 and cfg.arch == "rwkv7" and k == "blocks.0.att.a0":
            C, R = cfg.d_model, cfg.value_lora
            out["blocks.0.att.v1"] = torch.zeros(C, R, dtype=dt)
            out["blocks.0.att.v2"] = torch.zeros(R, C, dtype=dt)
            out["blocks.0.att.v0"] = torch.ones(1, 1, C, dtype=dt)
    return out
