"""Weights into models, below both training and export: `load_source` reads a model with its
config from any place skein or RWKV-LM keeps weights, and `load_into` puts a state dict into a
built model (layout fitted, keys and shapes checked strictly).

Sources (`load_source`), each giving the model with its config:

    run directory            config.yaml + checkpoints/latest: the newest complete checkpoint
    checkpoint directory     checkpoints/s{stage}-{step}/ (model.ckpt + meta.json)
    Lightning .ckpt          a file, or a ZeRO shard directory (consolidated on the CPU)
    .pth                     RWKV-LM layout (a snapshot, an import, or a file RWKV-LM wrote)
    .safetensors             skein's safetensors export (+ its .json)
    Hugging Face directory   transformers RWKV-4 (config.json + weights)

The model config comes from the checkpoint itself (Lightning checkpoints embed the run config),
else the run's config.yaml, else a `<name>.yaml` beside a .pth, else (RWKV-LM files) the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from skein.data.binidx import read_meta
from skein.rwkv.convert import (
    fit_layout,
    from_rwkv_lm,
    load_strict,
    model_from_state_dict,
    read_hf,
    read_safetensors,
)
from skein.rwkv.models import CausalLM
from skein.train.checkpoints.checkpoint import latest_checkpoint, load_weights
from skein.train.typed import ConfigError

RUN_DIR_DEPTH = 3
"""How many parent folders of a checkpoint or snapshot are searched for its run's config.yaml."""


@dataclass
class Source:
    """A loaded model and where it came from."""

    model: CausalLM
    path: str
    """The weights that were read (for a run directory: its newest checkpoint)."""
    run_config: dict[str, Any] | None
    """The run config (or import YAML) the model belongs to, when there is one."""

    def precision(self) -> str:
        """trainer.precision of the run config (auto when there is none): eval and generate run
        the model at it."""
        return str(((self.run_config or {}).get("trainer") or {}).get("precision", "auto"))

    def tokenizer_spec(self) -> str | None:
        """data.tokenizer of the run config, else the tokenizer recorded in its shards' meta."""
        data = (self.run_config or {}).get("data") or {}
        if data.get("tokenizer"):
            return data["tokenizer"]
        for prefix in data.get("train") or []:
            meta = read_meta(prefix)
            if meta is not None and meta.get("tokenizer", {}).get("spec"):
                return meta["tokenizer"]["spec"]
        return None


def run_dir_of(path: str | Path) -> Path | None:
    """The run directory holding `path`: itself or the nearest of its parents (up to RUN_DIR_DEPTH)
    with a config.yaml beside checkpoints/ or snapshots/; None outside a run."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for d in [folder, *folder.parents][: RUN_DIR_DEPTH + 1]:
        if (d / "config.yaml").is_file() and ((d / "checkpoints").is_dir() or (d / "snapshots").is_dir()):
            return d
    return None


def _run_config_near(path: Path) -> dict[str, Any] | None:
    """config.yaml of the run directory holding `path` (a folder with checkpoints/ or snapshots/)."""
    run = run_dir_of(path)
    return yaml.safe_load((run / "config.yaml").read_text()) if run is not None else None


def _embedded_config(ckpt: Path) -> dict[str, Any] | None:
    """The run config a skein Lightning checkpoint carries (a ZeRO directory: in its client state)."""
    if ckpt.is_dir():  # ZeRO-2: mp_rank_00_model_states.pt; ZeRO-3: zero_pp_rank_{r}_mp_rank_00_...
        states = sorted((ckpt / "checkpoint").glob("*mp_rank_00_model_states.pt"))
        if not states:
            return None
        obj = torch.load(states[0], map_location="cpu", weights_only=False)
    else:
        try:  # memory-mapped: only the small "skein" entry is actually read
            obj = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)
        except RuntimeError:  # a file in the legacy (non-zip) format cannot be mapped
            obj = torch.load(ckpt, map_location="cpu", weights_only=False)
    meta = obj.get("skein") if isinstance(obj, dict) else None
    return meta.get("config") if isinstance(meta, dict) else None


def _from_checkpoint(ckpt: Path) -> Source:
    run_cfg = _embedded_config(ckpt) or _run_config_near(ckpt)
    if run_cfg is None or "model" not in run_cfg:
        raise ConfigError(f"{ckpt}: no model config (neither embedded nor a run directory's config.yaml)")
    model = model_from_state_dict(run_cfg["model"], load_weights(ckpt), str(ckpt))
    return Source(model, str(ckpt), run_cfg)


def _from_pth(path: Path) -> Source:
    sd = load_weights(path)
    side = path.with_suffix(".yaml")
    run_cfg = yaml.safe_load(side.read_text()) if side.is_file() else _run_config_near(path)
    if run_cfg is not None and "model" in run_cfg:
        return Source(model_from_state_dict(run_cfg["model"], sd, str(path)), str(path), run_cfg)
    return Source(from_rwkv_lm(sd, source=str(path)), str(path), None)


def load_source(source: str) -> Source:
    """Load the model of a run directory, checkpoint, .pth, .safetensors or Hugging Face directory
    (see the module docstring); strict: the weights must fit the config exactly."""
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"{source}: no such file or directory")
    if p.is_dir():
        if (p / "checkpoints").is_dir():
            found = latest_checkpoint(p)
            if found is None:
                raise ConfigError(f"{p}: run directory without a complete checkpoint (no checkpoints/latest)")
            p = found[0]
        if (p / "model.ckpt").exists():
            return _from_checkpoint(p / "model.ckpt")
        if (p / "config.json").is_file():
            return Source(read_hf(p), str(p), None)
        if not ((p / "checkpoint").is_dir() or (p / "latest").is_file()):
            raise ConfigError(
                f"{p}: not a run directory, checkpoint directory, ZeRO checkpoint or Hugging Face directory"
            )
        return _from_checkpoint(p)
    if p.suffix == ".safetensors":
        return Source(read_safetensors(p), str(p), _run_config_near(p))
    if p.suffix == ".ckpt":
        return _from_checkpoint(p)
    return _from_pth(p)


def load_into(model: CausalLM, sd: dict[str, torch.Tensor], source: str) -> CausalLM:
    """Load `sd` (skein's or RWKV-LM's layout) into `model`; a ValueError names every key or
    shape that does not fit."""
    return load_strict(model, fit_layout(sd, model), source)
