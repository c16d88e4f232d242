"""What a resume may change: the new run config against the run directory's config.yaml.

Checked before anything is written. Once a checkpoint exists, a key may change only if it cannot
alter what the checkpoint holds or the stages already started (done or in progress):

- allowed: run.name, run.out_dir (another spelling of the same directory), run.stop_after_steps,
  data.num_workers, trainer.accelerator / devices / num_nodes / grad_checkpointing / compile /
  compile_mode / fused_loss / loss_chunk_tokens / deterministic, all of checkpoint.*, log.*, eval.* and slurm.*; every key of a stage not started yet
  (stages may be added or removed after the current one); optim.lr_init / lr_final when every
  started stage sets its own lr_init / lr_final.
- refused: model.* (weights), data.train / weights / tokenizer and run.seed (the data order),
  optim.* and schedule.* otherwise (the optimizer and lr of started stages), trainer.strategy /
  zero_stage / offload_optimizer / precision when they change what they resolve to (the sharded
  engine or not, its ZeRO stage and offload, the precision: the checkpoint format and the
  numerics; ddp, single and a CPU `auto` are the same), any key of a started stage, removing a
  started stage.

A refusal is one ConfigError listing every refused key as `key: old -> new`; allowed changes are
printed as one line. Without a checkpoint any change is allowed (the run starts over).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from skein.train.checkpoints.checkpoint import write_text_atomic
from skein.train.checkpoints.lock import is_global_zero
from skein.train.config import RunConfig, dump_config, load_config
from skein.train.parallel.execution import resolve_execution
from skein.train.typed import ConfigError, plain

ALLOWED = (
    "run.name",
    "run.out_dir",
    "run.stop_after_steps",
    "data.num_workers",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.grad_checkpointing",
    "trainer.compile",
    "trainer.compile_mode",
    "trainer.fused_loss",
    "trainer.loss_chunk_tokens",
    "trainer.deterministic",
    "checkpoint.",
    "log.",
    "eval.",
    "slurm.",
)
# Refused only when they change what they resolve to (Execution.identity: `auto` is the sharded
# engine on several GPUs, one device on one GPU, DDP or a single process on the CPU; ddp and
# single write the same checkpoint).
ENGINE_KEYS = ("trainer.strategy", "trainer.zero_stage", "trainer.offload_optimizer", "trainer.precision")
ABSENT = "<absent>"


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """Dotted key -> value; the model section with its defaults filled in, stages by index."""
    d = plain(cfg.to_dict())
    d["model"] = plain(asdict(cfg.model))
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            out[prefix] = value

    walk("", d)
    return out


def _engine(cfg: RunConfig) -> tuple[Any, ...]:
    """What the strategy and precision keys resolve to here (Execution.identity): the checkpoint
    format with the engine's settings, and the precision."""
    return resolve_execution(cfg.trainer, validate=False).identity()


def _stage_of(key: str) -> int | None:
    if key.startswith("stages["):
        return int(key[len("stages[") : key.index("]")])
    return None


def classify(old: RunConfig, new: RunConfig, stage_index: int) -> tuple[list[str], list[str]]:
    """(refused, allowed) changes as `key: old -> new`, for a run whose newest checkpoint is in
    stage `stage_index` (stages 0..stage_index have started)."""
    a, b = flatten(old), flatten(new)
    refused, allowed = [], []
    for key in sorted(a.keys() | b.keys(), key=lambda k: (k.split(".")[0], k)):
        va, vb = a.get(key, ABSENT), b.get(key, ABSENT)
        if va == vb:
            continue
        line = f"{key}: {va} -> {vb}"
        stage = _stage_of(key)
        if key.startswith(ALLOWED):
            ok = True
        elif key in ENGINE_KEYS:
            ok = _engine(old) == _engine(new)
        elif stage is not None:
            ok = stage > stage_index
        elif key in ("optim.lr_init", "optim.lr_final"):
            name = key.split(".")[1]
            started = range(min(stage_index + 1, len(old.stages), len(new.stages)))
            ok = all(
                getattr(old.stages[i], name) is not None and getattr(new.stages[i], name) is not None
                for i in started
            )
        else:
            ok = False
        (allowed if ok else refused).append(line)
    return refused, allowed


def check_resume_config(
    cfg: RunConfig,
    out_dir: Path,
    checkpoint: Path | None,
    stage_index: int,
    init_from: str | None,
) -> list[str]:
    """Refuse (ConfigError) a config that `out_dir`'s newest checkpoint cannot resume, and
    --init_from on a run that already has checkpoints. Returns the allowed changes."""
    if checkpoint is None:
        return []
    if init_from is not None:
        raise ConfigError(
            f"--init_from {init_from}: {out_dir} already holds checkpoints (newest {checkpoint.name}), "
            "which a resume continues from; drop --init_from, or choose another run.out_dir"
        )
    stored = out_dir / "config.yaml"
    if not stored.is_file():
        return []
    try:
        old = load_config(stored)
    except ConfigError as e:
        raise ConfigError(f"{e}; the run's stored config cannot be read to check this resume") from e
    refused, allowed = classify(old, cfg, stage_index)
    if refused:
        raise ConfigError(
            f"{stored}: this config cannot resume the run at {checkpoint.name} (stage {stage_index} "
            f"started): {'; '.join(refused)}; restore these values, or choose another run.out_dir"
        )
    if allowed and is_global_zero():
        print(f"skein train: resuming {out_dir} with a changed config: {'; '.join(allowed)}")
    return allowed


def write_run_config(cfg: RunConfig, out_dir: Path) -> None:
    """Write `out_dir`/config.yaml atomically: a temporary file in the directory, read back and
    compared, then renamed over the old one."""
    write_text_atomic(out_dir / "config.yaml", dump_config(cfg))
