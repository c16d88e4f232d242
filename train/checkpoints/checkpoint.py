"""Run-directory checkpoints that are never half-written and never trusted unverified.

Layout of a run directory:

    config.yaml                          the resolved config of the run
    checkpoints/s{stage}-{step:08d}/     one full checkpoint (model, optimizer, loops, schedule)
        model.ckpt                       Lightning checkpoint (a directory of ZeRO shards when sharded)
        meta.json                        a CheckpointMeta: position, tokens per step, checksums
    checkpoints/latest                   name of the newest complete checkpoint
    snapshots/rwkv-s{stage}-{step}.pth   light weights-only snapshots in RWKV-LM's layout

A checkpoint is written under a `.tmp` name, every file of it is hashed (SHA-256) into meta.json,
and the directory is renamed once every rank has finished, so a crash during a save leaves the
previous checkpoint valid; older ones are pruned only after that. A resume verifies the hashes
and falls back to the newest checkpoint that verifies; the refused one is renamed `.refused`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from skein.train.typed import ConfigError

META = "meta.json"
NAME = re.compile(r"^s(\d+)-(\d{8})$")
BLOCK = 16 << 20  # bytes read per hash update: large blocks keep hashing at disk speed


class CheckpointError(ConfigError):
    """No checkpoint of a run directory can be trusted (damaged, or its meta.json unreadable)."""


@dataclass(kw_only=True)
class CheckpointMeta:
    """What meta.json records next to each model.ckpt; written and read only here."""

    stage_index: int
    step: int
    """Optimizer steps done in the stage."""
    tokens_stage: int
    tokens_total: int
    stage_done: bool
    tokens_per_step: list[int] = field(default_factory=list)
    """Tokens per optimizer step of every stage started so far, fixed when each stage first
    started (a resume on another world size keeps them by gradient accumulation)."""
    files: dict[str, str] | None = None
    """SHA-256 of every file of model.ckpt, by path relative to the checkpoint directory; None in
    checkpoints written before skein recorded checksums."""
    time: float = 0.0
    elapsed: float | None = None
    """The run's training time in seconds up to this checkpoint (metrics.csv `time` goes on from
    it after a resume); None in checkpoints written before skein recorded it."""

    def write(self, ckpt: Path) -> None:
        write_text_atomic(ckpt / META, json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, ckpt: Path) -> CheckpointMeta:
        f = ckpt / META
        try:
            d = json.loads(f.read_text())
            known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
            return cls(**known)
        except FileNotFoundError:
            raise CheckpointError(f"{f}: missing; the checkpoint is incomplete") from None
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{f}: unreadable ({e}); the checkpoint cannot be trusted") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory: written, synced,
    read back and compared, then renamed over `path` (a crash leaves the old file or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if tmp.read_text() != text:
        tmp.unlink()
        raise OSError(f"{tmp}: the written text does not read back")
    os.replace(tmp, path)


def checkpoint_name(stage_index: int, step: int) -> str:
    return f"s{stage_index}-{step:08d}"


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != META)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def checksum_files(ckpt: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint directory but meta.json (one read of each file)."""
    return {str(p.relative_to(ckpt)): sha256_file(p) for p in _files(ckpt)}


def verify(ckpt: Path, meta: CheckpointMeta) -> str | None:
    """Why the checkpoint's files do not match its recorded checksums, or None when they do."""
    if meta.files is None:
        return None
    present = {str(p.relative_to(ckpt)) for p in _files(ckpt)}
    for rel, digest in meta.files.items():
        if rel not in present:
            return f"{ckpt / rel} is missing"
        try:
            if sha256_file(ckpt / rel) != digest:
                return f"{ckpt / rel} does not match its checksum (the file is damaged)"
        except OSError as e:
            return f"{ckpt / rel} cannot be read ({e})"
    extra = sorted(present - set(meta.files))
    if extra:
        return f"{ckpt / extra[0]} is not among the files the checkpoint recorded"
    return None


class DirectCheckpointIO(TorchCheckpointIO):
    """Writes a Lightning checkpoint straight to its path. Lightning's default stages the file in
    the system temp directory (an fsspec transaction) before moving it: a save would need free
    space there as well. The path is already inside the checkpoint's `.tmp` directory, which is
    published by a rename, so the direct write is just as safe."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())


def save_checkpoint(trainer: L.Trainer, out_dir: Path, meta: CheckpointMeta, keep_last: int) -> Path:
    """Save a full checkpoint collectively (every rank calls this) and publish it atomically."""
    ckpt_root = out_dir / "checkpoints"
    name = checkpoint_name(meta.stage_index, meta.step)
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
    if trainer.is_global_zero:  # every rank's files are complete: hash them all here
        meta.files = checksum_files(tmp)
        meta.write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(ckpt_root / "latest", name + "\n")
        prune(ckpt_root, keep_last)
    trainer.strategy.barrier("skein_ckpt_done")
    return final


def _complete(ckpt_root: Path) -> list[Path]:
    """Published checkpoints, oldest first (by stage, then step)."""
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and NAME.match(p.name)]
    return sorted(found, key=lambda p: tuple(int(g) for g in NAME.match(p.name).groups()))


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete complete checkpoints beyond the newest `keep_last` (stage ends and the one `latest`
    names, which was just verified or written, are kept as well), and what saves that crashed left
    under .tmp names. Refused checkpoints (`.refused`) are left for the user to inspect."""
    for stale in ckpt_root.glob("*.tmp"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    done = _complete(ckpt_root)
    latest = (ckpt_root / "latest").read_text().strip() if (ckpt_root / "latest").exists() else None
    keep = set(done[-keep_last:])
    for p in done:
        if p in keep or p.name == latest:
            continue
        try:
            if CheckpointMeta.read(p).stage_done:
                continue
        except CheckpointError:
            pass
        shutil.rmtree(p)


def latest_checkpoint(out_dir: str | Path) -> tuple[Path, CheckpointMeta] | None:
    """The checkpoint the `latest` pointer names and its meta (not verified), or None."""
    ckpt_root = Path(out_dir) / "checkpoints"
    pointer = ckpt_root / "latest"
    if not pointer.exists():
        return None
    path = ckpt_root / pointer.read_text().strip()
    if not (path / META).exists():
        raise CheckpointError(f"{pointer} names {path}, which has no meta.json: the run directory is damaged")
    return path, CheckpointMeta.read(path)


def _note(text: str) -> None:
    print(f"skein: {text}", file=sys.stderr, flush=True)


def resume_checkpoint(out_dir: str | Path, owner: bool = True) -> tuple[Path, CheckpointMeta] | None:
    """The newest checkpoint of a run directory whose files match their checksums, or None when
    there is none at all. A refused checkpoint is named on stderr with the reason and (by the `owner`, global rank 0)
    renamed `<name>.refused`; `latest` is pointed at the one used. Checkpoints without checksums
    (older skein) are used with a note. Raises CheckpointError when none can be trusted."""
    ckpt_root = Path(out_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        return None
    pointer = ckpt_root / "latest"
    named = pointer.read_text().strip() if pointer.exists() else None
    candidates = _complete(ckpt_root)[::-1]
    if not candidates:
        return None
    candidates.sort(key=lambda p: p.name != named)  # the pointer's first, then newest first
    refused: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            meta = CheckpointMeta.read(path)
            why = verify(path, meta)
        except CheckpointError as e:
            why = str(e)
        if why is None:
            break
        refused.append((path, why))
    else:
        raise CheckpointError(
            f"{ckpt_root}: no checkpoint verifies ({'; '.join(w for _, w in refused)}); "
            "start a new run.out_dir, or --init_from a copy of good weights"
        )
    if meta.files is None:
        _note(f"{path.name} records no checksums (saved by an older skein): loading it unverified")
    for bad, why in refused:
        _note(f"refused checkpoint {bad.name}: {why}; resuming from {path.name} instead")
        if owner and bad.exists():
            os.replace(bad, bad.with_name(bad.name + ".refused"))
    if owner and refused:
        write_text_atomic(pointer, path.name + "\n")
    return path, meta


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a skein checkpoint directory, a Lightning .ckpt, or a weights-only .pth
    (RWKV-LM layout), as a state dict of the bare model."""
    path = Path(path)
    if path.is_dir() and (path / "model.ckpt").exists():
        path = path / "model.ckpt"
    if path.is_dir():  # a sharded engine's checkpoint directory: the fp32 weights gathered on the CPU
        from skein.train.parallel.execution import load_sharded_weights

        sd = load_sharded_weights(path)
    else:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such checkpoint or weights file")
        obj = torch.load(path, map_location="cpu", weights_only=False)
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    prefix = "model."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd
