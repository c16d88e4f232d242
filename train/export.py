"""`skein export` and `skein import`: a trained model from any of its sources into the formats
other tools load, and RWKV-LM files into a skein weights file + model config.

Sources (`load_source`), each giving the model with its config:

    run directory            config.yaml + checkpoints/latest: the newest complete checkpoint
    checkpoint directory     checkpoints/s{stage}-{step}/ (model.ckpt + meta.json)
    Lightning .ckpt          a file, or a DeepSpeed ZeRO directory (consolidated on the CPU)
    .pth                     RWKV-LM layout (a snapshot, an import, or a file RWKV-LM wrote)
    .safetensors             skein's safetensors export (+ its .json)
    Hugging Face directory   transformers RWKV-4 (config.json + weights)

The model config comes from the checkpoint itself (Lightning checkpoints embed the run config),
else the run's config.yaml, else a `<name>.yaml` beside a .pth, else (RWKV-LM files) the shapes.

Formats (`export`): rwkv_lm (.pth for RWKV-LM, ChatRWKV and the `rwkv` pip package; RWKV-4/7),
safetensors (+ .json config; every architecture), hf (directory for transformers'
RwkvForCausalLM; RWKV-4), fla (directory for flash-linear-attention; RWKV-7, DeltaProduct).
Every output is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from skein.data.binidx import read_meta
from skein.rwkv.convert import (
    from_rwkv_lm,
    model_from_state_dict,
    read_hf,
    read_safetensors,
    resolve_dtype,
    to_fla,
    to_hf,
    to_rwkv_lm,
    to_safetensors,
)
from skein.rwkv.convert.safetensors_file import config_path
from skein.rwkv.models import CausalLM
from skein.train.checkpoint import latest_checkpoint, load_weights
from skein.train.typed import plain

FORMATS = ("rwkv_lm", "safetensors", "hf", "fla")
SUFFIXES = {"rwkv_lm": ".pth", "safetensors": ".safetensors"}
"""File formats and the suffix their output must have (hf and fla write directories)."""
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


def _run_config_near(path: Path) -> dict[str, Any] | None:
    """config.yaml of the run directory holding `path` (a folder with checkpoints/ or snapshots/)."""
    folder = path if path.is_dir() else path.parent
    for d in [folder, *folder.parents][: RUN_DIR_DEPTH + 1]:
        if (d / "config.yaml").is_file() and ((d / "checkpoints").is_dir() or (d / "snapshots").is_dir()):
            return yaml.safe_load((d / "config.yaml").read_text())
    return None


def _embedded_config(ckpt: Path) -> dict[str, Any] | None:
    """The run config a skein Lightning checkpoint carries (DeepSpeed: in its client state)."""
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
        raise ValueError(f"{ckpt}: no model config (neither embedded nor a run directory's config.yaml)")
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
                raise ValueError(f"{p}: run directory without a complete checkpoint (no checkpoints/latest)")
            p = found[0]
        if (p / "model.ckpt").exists():
            return _from_checkpoint(p / "model.ckpt")
        if (p / "config.json").is_file():
            return Source(read_hf(p), str(p), None)
        if not ((p / "checkpoint").is_dir() or (p / "latest").is_file()):
            raise ValueError(
                f"{p}: not a run directory, checkpoint directory, DeepSpeed checkpoint or Hugging Face directory"
            )
        return _from_checkpoint(p)
    if p.suffix == ".safetensors":
        return Source(read_safetensors(p), str(p), _run_config_near(p))
    if p.suffix == ".ckpt":
        return _from_checkpoint(p)
    return _from_pth(p)


def _atomic_file(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _atomic_dir(path: Path, files: dict[str, Callable[[Path], None]]) -> None:
    """Write a directory's files in `<path>.tmp`, then swap it in (an old `path` goes last)."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    for d in (tmp, old):
        if d.exists():
            shutil.rmtree(d)
    tmp.mkdir(parents=True)
    for name, write in files.items():
        write(tmp / name)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def _save_safetensors(sd: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    from safetensors.torch import save_file

    return lambda p: save_file(sd, str(p), metadata={"format": "pt"})


def _save_json(obj: dict[str, Any]) -> Callable[[Path], None]:
    return lambda p: p.write_text(json.dumps(obj, indent=1) + "\n")


def _need_suffix(path: Path, suffix: str, fmt: str) -> None:
    if path.suffix != suffix:
        raise ValueError(f"output {path}: format {fmt} writes a {suffix} file; name the output *{suffix}")


def export(source: str, output: str, format: str = "rwkv_lm", dtype: str = "fp32") -> str:
    """Export a model's weights for other tools.

    Args:
        source: run directory, checkpoint directory, Lightning .ckpt, DeepSpeed checkpoint
            directory, .pth, .safetensors or Hugging Face RWKV-4 directory.
        output: rwkv_lm: a .pth file; safetensors: a .safetensors file (config in .json beside
            it); hf and fla: a directory.
        format: rwkv_lm, safetensors, hf (RWKV-4) or fla (RWKV-7, DeltaProduct).
        dtype: fp32, bf16 or fp16.
    Returns:
        The path written.
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r}: choose one of {FORMATS}")
    resolve_dtype(dtype)
    out = Path(output)
    if format in SUFFIXES:
        _need_suffix(out, SUFFIXES[format], format)
    src = load_source(source)
    model = src.model
    if format == "rwkv_lm":
        sd = to_rwkv_lm(model, dtype)
        _atomic_file(out, lambda p: torch.save(sd, p))
    elif format == "safetensors":
        meta, sd = to_safetensors(model, dtype)
        _atomic_file(config_path(out), _save_json(meta))
        _atomic_file(out, _save_safetensors(sd))
    elif format == "hf":
        spec = src.tokenizer_spec()
        eod = _tokenizer_eod(spec)
        config, sd = to_hf(model, dtype, eod_id=eod)
        _atomic_dir(out, {"config.json": _save_json(config), "model.safetensors": _save_safetensors(sd)})
    else:
        config, sd = to_fla(model, dtype)
        _atomic_dir(out, {"config.json": _save_json(config), "model.safetensors": _save_safetensors(sd)})
    print(f"export: {src.path} ({model.config.arch}) -> {out} [{format}, {dtype}]")
    return str(out)


def _tokenizer_eod(spec: str | None) -> int:
    """End-of-document id of a tokenizer spec (0, RWKV's convention, when unknown)."""
    if spec is None:
        return 0
    from skein.data.tokenizer import load_tokenizer

    return load_tokenizer(spec).eod_id


def import_weights(source: str, output: str, tokenizer: str | None = None) -> str:
    """Import weights (an RWKV-LM .pth, or any source `export` reads) as a skein weights file.

    Writes `output` (.pth, float32, skein's layout: what `skein train --init_from` loads) and
    `<output stem>.yaml` beside it: a run config holding the model section (and data.tokenizer
    when known), which `skein generate` and `skein export` pick up and `skein train` can start from.

    Args:
        source: the weights to import (config inferred from the shapes for RWKV-LM files).
        output: the .pth to write.
        tokenizer: tokenizer spec to record (byte, hf:<tokenizer.json>, rwkv_world[:<vocab>]).
    Returns:
        The weights path written.
    """
    out = Path(output)
    _need_suffix(out, ".pth", "import")
    src = load_source(source)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in src.model.state_dict().items()}
    run_cfg: dict[str, Any] = {"model": plain(src.model.config.to_dict())}
    spec = tokenizer or src.tokenizer_spec()
    if spec:
        run_cfg["data"] = {"tokenizer": spec}
    _atomic_file(out.with_suffix(".yaml"), lambda p: p.write_text(yaml.safe_dump(run_cfg, sort_keys=False)))
    _atomic_file(out, lambda p: torch.save(sd, p))
    print(f"import: {src.path} ({src.model.config.arch}) -> {out} + {out.with_suffix('.yaml')}")
    return str(out)
