"""Architecture name -> (config dataclass, model class), each module imported on first use. Adding
an architecture adds its row here and its file rwkv/models/<arch>.py."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skein.rwkv.models.common import CausalLM, ModelConfig

# name -> (module, config class, model class); imported on first use.
MODELS: dict[str, tuple[str, str, str]] = {
    "rwkv4": ("skein.rwkv.models.rwkv4", "RWKV4Config", "RWKV4"),
    "rwkv7": ("skein.rwkv.models.rwkv7", "RWKV7Config", "RWKV7"),
    "deltaproduct": ("skein.rwkv.models.deltaproduct", "DeltaProductConfig", "DeltaProduct"),
    "llama": ("skein.rwkv.models.llama", "LlamaConfig", "Llama"),
}


def _lookup(arch: str) -> tuple[type[ModelConfig], type[CausalLM]]:
    if arch not in MODELS:
        raise ValueError(f"model.arch: unknown architecture {arch!r}; choose one of {sorted(MODELS)}")
    module, cfg_name, model_name = MODELS[arch]
    mod = importlib.import_module(module)
    return getattr(mod, cfg_name), getattr(mod, model_name)


def config_class(arch: str) -> type[ModelConfig]:
    """The config dataclass of an architecture."""
    return _lookup(arch)[0]


def model_class(arch: str) -> type[CausalLM]:
    """The model class of an architecture (its `formats` say which weight formats it has)."""
    return _lookup(arch)[1]
