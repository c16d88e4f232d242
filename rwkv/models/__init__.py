"""The model registry: architecture name -> (config dataclass, model class).

A run config names the architecture in `model.arch` (ModelConfig.variants() lists them for the
typed config loader); `model_config_from_dict` validates a plain mapping (e.g. one stored in a
checkpoint) against that architecture's dataclass.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from skein.rwkv.models.common import CausalLM, ModelConfig, State, detach_state
from skein.rwkv.models.registry import MODELS, config_class, model_class


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
