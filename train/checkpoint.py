"""Run-directory checkpoints that are never half-written.

Layout of a run directory:

    config.yaml                          the resolved config of the run
    checkpoints/s{stage}-{step:08d}/     one full checkpoint (model, optimizer, loops, schedule)
        model.ckpt                       Lightning checkpoint (a directory under DeepSpeed)
        meta.json                        stage, step, tokens, whether the stage is finished
    checkpoints/latest                   name of the newest complete checkpoint
    snapshots/rwkv-s{stage}-{step}.pth   light weights-only snapshots in RWKV-LM's layout

A checkpoint is written under a `.tmp` name and renamed once every rank has finished, so a crash
during a save leaves the previous checkpoint valid; older ones are pruned only after that.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def checkpoint_name(stage_index: int, step: int) -> str:
    return f"s{stage_index}-{step:08d}"


def save_checkpoint(trainer: L.Trainer, out_dir: Path, meta: dict[str, Any], keep_last: int) -> Path:
    """Save a full checkpoint collectively (every rank calls this) and publish it atomically."""
    ckpt_root = out_dir / "checkpoints"
    name = checkpoint_name(meta["stage_index"], meta["step"])
    final = ckpt_root / name
    tmp = ckpt_root / (name + ".tmp")
    if trainer.is_global_zero:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    trainer.strategy.barrier("skein_ckpt_begin")
    trainer.save_checkpoint(tmp / "model.ckpt")
    trainer.strategy.barrier("skein_ckpt_written")
    if trainer.is_global_zero:
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(ckpt_root / "latest", name + "\n")
        prune(ckpt_root, keep_last)
    trainer.strategy.barrier("skein_ckpt_done")
    return final


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete complete checkpoints beyond the newest `keep_last` (stage ends are kept as well),
    and what saves that crashed left under .tmp names."""
    for stale in ckpt_root.glob("*.tmp"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    done = sorted(p for p in ckpt_root.iterdir() if p.is_dir())
    latest = (ckpt_root / "latest").read_text().strip() if (ckpt_root / "latest").exists() else None
    keep = set(done[-keep_last:])
    for p in done:
        meta = read_meta(p)
        if p in keep or p.name == latest or (meta and meta.get("stage_done")):
            continue
        shutil.rmtree(p)


def read_meta(ckpt: Path) -> dict[str, Any] | None:
    f = ckpt / "meta.json"
    return json.loads(f.read_text()) if f.exists() else None


def latest_checkpoint(out_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of a run directory and its meta, or None."""
    ckpt_root = Path(out_dir) / "checkpoints"
    pointer = ckpt_root / "latest"
    if not pointer.exists():
        return None
    path = ckpt_root / pointer.read_text().strip()
    meta = read_meta(path)
    if meta is None:
        raise ValueError(f"{pointer} names {path}, which has no meta.json: the run directory is damaged")
    return path, meta


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a skein checkpoint directory, a Lightning .ckpt, or a weights-only .pth
    (RWKV-LM layout), as a state dict of the bare model."""
    path = Path(path)
    if path.is_dir() and (path / "model.ckpt").exists():
        path = path / "model.ckpt"
    if path.is_dir():  # DeepSpeed ZeRO checkpoint directory: consolidate the fp32 weights on the CPU
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(path))
        sd = {k.removeprefix("_forward_module."): v for k, v in sd.items()}
    else:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such checkpoint or weights file")
        obj = torch.load(path, map_location="cpu", weights_only=False)
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    prefix = "model."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd
