"""Helpers of the export tests: tiny perturbed models, skein safetensors sources, and the
official `rwkv` package run in a subprocess outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from skein.rwkv import build_model
from skein.rwkv.convert import to_safetensors
from skein.rwkv.convert.safetensors_file import config_path
from skein.rwkv.models import CausalLM
from tests.models.harness import perturb_parameters

REPO = Path(__file__).resolve().parents[2]
TINY: dict[str, dict[str, Any]] = {
    "rwkv4": {"arch": "rwkv4", "vocab_size": 257, "n_layer": 2, "d_model": 64},
    "rwkv7": {"arch": "rwkv7", "vocab_size": 257, "n_layer": 3, "d_model": 64, "head_size": 16},
    "deltaproduct": {"arch": "deltaproduct", "vocab_size": 257, "n_layer": 2, "d_model": 64, "n_head": 2},
    "llama": {"arch": "llama", "vocab_size": 257, "n_layer": 2, "d_model": 32, "n_head": 2},
}


def tiny_model(arch: str, std: float = 0.1, **fields: Any) -> CausalLM:
    """A tiny model with every parameter moved off its init, so each tensor shapes the logits."""
    model = build_model({**TINY[arch], **fields})
    perturb_parameters(model, std=std)
    return model.eval()


def logits(model: CausalLM, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


def save_skein_safetensors(model: CausalLM, path: Path) -> Path:
    """Write a skein safetensors export (tensors + .json config) without the export command."""
    meta, sd = to_safetensors(model)
    save_file(sd, str(path), metadata={"format": "pt"})
    config_path(path).write_text(json.dumps(meta))
    return path


def run_official(arch: str, pth: Path, tokens: list[int], workdir: Path) -> dict[str, torch.Tensor]:
    """Logits of the official `rwkv` package for `tokens` through `pth`: "seq" (one forward over
    the list) and "rnn" (one token at a time with the state), both [T, V]."""
    tok_file, out_file = workdir / "tokens.pt", workdir / "official_out.pt"
    torch.save(torch.tensor(tokens), tok_file)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    script = Path(__file__).with_name("official_rwkv.py")
    res = subprocess.run(
        [sys.executable, str(script), arch, str(pth), str(tok_file), str(out_file)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    out = torch.load(out_file)
    assert not Path(out["package"]).is_relative_to(REPO), out["package"]
    return out
