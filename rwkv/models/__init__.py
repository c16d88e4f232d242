"""The model registry: architecture name -> (config dataclass, model class).

A run config names the architecture in `model.arch` (ModelConfig.variants() lists them for the
typed config loader); `model_config_from_dict` validates a plain mapping (e.g. one stored in a
checkpoint) against that architecture's dataclass.
"""

from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any

from skein.rwkv.models.common import CausalLM, ModelConfig, State, detach_state

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


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Build and validate a model config from a mapping with an `arch` key.

    Unknown keys raise a ValueError naming the key and the keys the architecture accepts.
    """
    if "arch" not in d:
        raise ValueError(f"model: missing key 'arch' (one of {sorted(MODELS)})")
    cls = config_class(d["arch"])
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(
            f"model: unknown key(s) {unknown} for arch {d['arch']!r}; known keys: {sorted(known)}"
        )
    return cls(**d)


def build_model(config: ModelConfig | dict[str, Any]) -> CausalLM:
    """Instantiate the model a config describes (weights initialised by the architecture's scheme)."""
    if isinstance(config, dict):
        config = model_config_from_dict(config)
    return model_class(config.arch)(config)


__all__ = [
    "MODELS",
    "CausalLM",
    "ModelConfig",
    "State",
    "build_model",
    "config_class",
    "detach_state",
    "model_class",
    "model_config_from_dict",
]
