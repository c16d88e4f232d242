"""skein's own safetensors export: the model's state dict (skein names, which for RWKV-4/7 are
RWKV-LM's) in `<name>.safetensors`, and the model config beside it in `<name>.json`:

    {"format": "skein", "dtype": "bf16", "model": {"arch": "rwkv7", "d_model": 768, ...}}

Unlike the RWKV-LM .pth, this carries every config field (epsilons, DeltaProduct and Llama too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from skein.rwkv.convert.common import DTYPES, cpu_tensor, resolve_dtype
from skein.rwkv.convert.rwkv_lm import model_from_state_dict
from skein.rwkv.models import CausalLM

FORMAT = "skein"


def config_path(path: str | Path) -> Path:
    """The JSON config that belongs beside a .safetensors file."""
    return Path(path).with_suffix(".json")


def to_safetensors(
    model: CausalLM, dtype: str | torch.dtype = "fp32"
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(JSON config dict, state dict) of the skein safetensors export."""
    dt = resolve_dtype(dtype)
    name = next(k for k, v in DTYPES.items() if v == dt)
    meta = {"format": FORMAT, "dtype": name, "model": model.config.to_dict()}
    return meta, {k: cpu_tensor(v, dt) for k, v in model.state_dict().items()}


def read_safetensors(path: str | Path) -> CausalLM:
    """Load a skein safetensors export (the .json beside it gives the config); strict."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file = config_path(path)
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: the model config {cfg_file} is missing")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != FORMAT or "model" not in meta:
        raise ValueError(
            f"{cfg_file}: not a skein safetensors config (needs 'format': '{FORMAT}' and 'model')"
        )
    return model_from_state_dict(meta["model"], load_file(str(path)), str(path))
