"""`skein export` and `skein import`: a trained model from any of its sources into the formats
other tools load, and RWKV-LM files into a skein weights file + model config.

Sources are whatever `load_source` (weights.py) reads.

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
from pathlib import Path
from typing import Any

import torch

from skein.rwkv.convert import resolve_dtype, to_fla, to_hf, to_rwkv_lm, to_safetensors
from skein.rwkv.convert.common import cpu_tensor
from skein.rwkv.convert.safetensors_file import config_path
from skein.rwkv.models import CausalLM
from skein.train.checkpoints.weights import Source, load_source
from skein.train.typed import plain

__all__ = ["FORMATS", "Source", "export", "import_weights", "load_source", "save_snapshot"]

FORMATS = ("rwkv_lm", "safetensors", "hf", "fla")
SUFFIXES = {"rwkv_lm": ".pth", "safetensors": ".safetensors"}
"""File formats and the suffix their output must have (hf and fla write directories)."""


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
        source: run directory, checkpoint directory, Lightning .ckpt, ZeRO checkpoint
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


def save_snapshot(model: CausalLM, path: Path, dtype: torch.dtype) -> None:
    """A weights-only snapshot of a training model, written atomically: RWKV-LM's .pth layout
    (with the tensors RWKV-LM's trainer expects) for architectures that have it, the model's own
    state dict otherwise."""
    if "rwkv_lm" in type(model).formats:
        sd = to_rwkv_lm(model, dtype)
    else:
        sd = {k: cpu_tensor(v, dtype) for k, v in model.state_dict().items()}
    _atomic_file(path, lambda p: torch.save(sd, p))


def _tokenizer_eod(spec: str | None) -> int:
    """End-of-document id of a tokenizer spec (0, RWKV's convention, when unknown)."""
    if spec is None:
        return 0
    from skein.data.tokenizer import load_tokenizer

    return load_tokenizer(spec).eod_id


def finetune_recipe(model: dict[str, Any], tokenizer: str | None, weights: Path) -> str:
    """A run YAML for finetuning imported weights: the model section, the tokenizer, one stage at
    a finetune's learning rate; validated like any run config before it is written."""
    from skein.train.config import RunConfig, dump_config
    from skein.train.typed import from_dict

    d = {
        "run": {"name": f"{weights.stem}-finetune", "out_dir": f"runs/{weights.stem}-finetune"},
        "model": model,
        "data": {"train": [], "tokenizer": tokenizer},
        "optim": {"lr_init": 2e-5, "lr_final": 2e-6},
        "schedule": {"kind": "constant_exp", "warmup_tokens": 1_000_000, "decay_fraction": 0.5},
        "stages": [{"ctx_len": 1024, "tokens": 100_000_000, "micro_bsz": 8}],
    }
    head = (
        f"# Finetune {weights}: set data.train (and the stage's ctx_len, tokens and micro_bsz), then\n"
        f"#   skein train {weights.with_suffix('.yaml')} data.train=[PREFIX] --init_from {weights}\n"
    )
    return head + dump_config(from_dict(RunConfig, plain(d)))


def import_weights(source: str, output: str, tokenizer: str | None = None) -> str:
    """Import weights (an RWKV-LM .pth, or any source `export` reads) as a skein weights file.

    Writes `output` (.pth, float32, skein's layout: what `skein train --init_from` loads) and
    `<output stem>.yaml` beside it: a ready finetune recipe (the model section, data.tokenizer when
    known, one stage), which `skein generate` and `skein export` pick up and `skein train` runs
    once data.train is set.

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
    recipe = finetune_recipe(src.model.config.to_dict(), tokenizer or src.tokenizer_spec(), out)
    _atomic_file(out.with_suffix(".yaml"), lambda p: p.write_text(recipe))
    _atomic_file(out, lambda p: torch.save(sd, p))
    print(f"import: {src.path} ({src.model.config.arch}) -> {out} + {out.with_suffix('.yaml')}")
    return str(out)
