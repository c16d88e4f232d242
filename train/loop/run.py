"""`skein train`: runs the stages of a run config in order, resuming from the run directory.

Each stage is one Lightning `fit` with its own context length, batch, learning rates and token
budget; the weights flow from one stage to the next (with a fresh optimizer, as context-extension
finetunes do). A restart finds the newest complete checkpoint in <out_dir>/checkpoints and goes on
from there: inside a stage, model, optimizer, schedule, step and data position come back exactly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from skein.data.dataset import PretrainDataset
from skein.train.checkpoints.checkpoint import (
    CheckpointMeta,
    latest_checkpoint,
    load_weights,
    resume_checkpoint,
)
from skein.train.checkpoints.lock import is_global_zero, run_lock
from skein.train.checkpoints.resume_check import check_resume_config, write_run_config
from skein.train.checkpoints.weights import load_source
from skein.train.commands.plots import plot_loss_curve
from skein.train.config import ConfigError, RunConfig, dump_config, load_config
from skein.train.loop.callbacks import (
    CheckpointCallback,
    MetricsCallback,
    SnapshotCallback,
    StagePosition,
    TrainingClock,
)
from skein.train.loop.data_module import StageDataModule
from skein.train.loop.evaluation import PeriodicEval, ValidationLoss
from skein.train.loop.module import LMModule
from skein.train.loop.slurm import cluster_plugins, requeue_if_stopped
from skein.train.loop.trainer import build_stage_trainer, build_training_model
from skein.train.parallel.execution import check_checkpoint_format, resolve_execution
from skein.train.plan import derived_comment, stage_plans
from skein.train.preflight import check_run


def _loggers(cfg: RunConfig, out_dir: Path) -> list[Any]:
    if cfg.log.wandb == "disabled":
        return []
    try:
        import wandb  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"log.wandb={cfg.log.wandb} needs the wandb package (pip install 'skein[train]'), or set log.wandb=disabled"
        ) from e
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    return [
        WandbLogger(
            project=cfg.log.project,
            name=cfg.run.name,
            save_dir=str(out_dir),
            offline=cfg.log.wandb == "offline",
        )
    ]


def _recorded_tokens_per_step(cfg: RunConfig, found: tuple[Path, CheckpointMeta] | None) -> list[int]:
    """The tokens per step of the stages the run has started, as its checkpoint recorded them;
    an explicit stages[i].tokens_per_step that differs is refused (a global batch is fixed once
    its stage has started)."""
    if found is None:
        return []
    path, meta = found
    if not meta.tokens_per_step:
        print(
            f"skein: {path.name} records no tokens per step (older skein): deriving them from the config",
            file=sys.stderr,
        )
    for i, (stage, kept) in enumerate(zip(cfg.stages, meta.tokens_per_step)):
        if stage.tokens_per_step is not None and stage.tokens_per_step != kept:
            raise ConfigError(
                f"stages.{i}.tokens_per_step={stage.tokens_per_step}, but {path} records {kept} for this "
                f"stage: a started stage keeps its global batch; set stages.{i}.tokens_per_step={kept}"
            )
    return meta.tokens_per_step


def train_from_config(
    cfg: RunConfig,
    resume: bool = True,
    init_from: str | None = None,
    extra_callbacks: list[L.Callback] | None = None,
) -> dict[str, Any]:
    """Run (or continue) every stage of `cfg`. Returns a summary: stages done, steps, tokens,
    whether the run was interrupted by a signal, and the last checkpoint. `extra_callbacks` join
    every stage (e.g. a PeriodicEval with more evaluators). The run directory is locked for the
    run's life (train/checkpoints/lock.py)."""
    check_run(cfg)  # data, tokenizer, vocabulary, hardware: before anything is built or written
    with run_lock(cfg.run.out_dir):
        return _train_locked(cfg, resume, init_from, extra_callbacks)


def _train_locked(
    cfg: RunConfig, resume: bool, init_from: str | None, extra_callbacks: list[L.Callback] | None
) -> dict[str, Any]:
    out_dir = Path(cfg.run.out_dir)
    found = resume_checkpoint(out_dir, is_global_zero()) if resume else latest_checkpoint(out_dir)
    if found is not None and not resume:
        raise ConfigError(
            f"{out_dir} already holds checkpoints (newest {found[0].name}); pass --resume to continue it, "
            "or choose another run.out_dir"
        )
    newest, stage_index = (found[0], found[1].stage_index) if found else (None, 0)
    check_resume_config(cfg, out_dir, newest, stage_index, init_from)
    plans = stage_plans(cfg, _recorded_tokens_per_step(cfg, found))  # the run's one derivation
    execution = resolve_execution(cfg.trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_global_zero():
        write_run_config(cfg, out_dir)

    start_stage, ckpt_path, start_step = 0, None, 0
    weights: tuple[dict[str, torch.Tensor], str] | None = None
    if found is not None:
        path, meta = found
        if meta.stage_done:
            start_stage = meta.stage_index + 1
            weights = (load_weights(path), str(path))
        else:
            start_stage, ckpt_path, start_step = meta.stage_index, path / "model.ckpt", meta.step
            check_checkpoint_format(ckpt_path, execution)
    elif init_from is not None:  # any source `skein export` reads: run dir, checkpoint, .pth, ...
        weights = (load_source(init_from).model.state_dict(), init_from)

    model = build_training_model(cfg, weights, execution)
    clock = TrainingClock((found[1].elapsed or 0.0) if found is not None else 0.0)

    summary: dict[str, Any] = {"interrupted": False, "stages_done": start_stage, "checkpoint": None}
    for si in range(start_stage, len(cfg.stages)):
        stage, plan = cfg.stages[si], plans[si]
        tokens_before = sum(p.total_tokens for p in plans[:si])
        position = StagePosition(si, plan.steps, tokens_before, [p.tokens_per_step for p in plans[: si + 1]])
        ckpt_cb = CheckpointCallback(out_dir, cfg.checkpoint, cfg.run, position, clock)
        callbacks: list[L.Callback] = [MetricsCallback(out_dir, cfg.log, position, clock)]
        if cfg.checkpoint.snapshot_every_steps:
            callbacks.append(SnapshotCallback(out_dir, cfg.checkpoint, si))
        if cfg.eval.every_steps:
            chunk = cfg.trainer.loss_chunk_tokens if cfg.trainer.fused_loss else None
            held_out = PretrainDataset(cfg.eval.val, None, stage.ctx_len, seed=cfg.run.seed)
            val = ValidationLoss(held_out, cfg.eval.val_samples, cfg.eval.micro_bsz, chunk)
            callbacks.append(PeriodicEval(out_dir, cfg.eval.every_steps, tokens_before, [val]))
        callbacks += extra_callbacks or []
        # Last: a checkpoint is published only after every row its step logs is on disk, so a
        # kill right after the save loses no metrics the resume would not write again.
        callbacks.append(ckpt_cb)
        module = LMModule(cfg, si, model, plan, execution)
        trainer = build_stage_trainer(
            cfg,
            plan,
            execution,
            out_dir,
            callbacks,
            logger=_loggers(cfg, out_dir) or False,
            plugins=cluster_plugins(),
        )
        data = StageDataModule(cfg, stage.ctx_len, stage.micro_bsz, plan.global_batch, start_step)
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
        ckpt_cb.save_stage_end(trainer, module)
        execution.release(trainer.strategy)
        summary.update(steps=trainer.global_step, tokens=tokens_before + module.tokens_seen)
        ckpt_path, start_step = None, 0
        if ckpt_cb.interrupted:
            summary["interrupted"] = True
            summary["signal"] = ckpt_cb.signal_received
            break
        summary["stages_done"] = si + 1
    found = latest_checkpoint(out_dir)
    summary["checkpoint"] = str(found[0]) if found else None
    metrics = out_dir / "metrics.csv"
    if metrics.exists() and is_global_zero():
        plot_loss_curve(metrics, out_dir / "loss.png")
    if summary["interrupted"]:
        summary["requeued"] = requeue_if_stopped(summary, cfg.slurm.requeue)
    return summary


def train(
    config: str | None,
    overrides: list[str] | None = None,
    resume: bool = True,
    init_from: str | None = None,
    print_config: bool = False,
) -> dict[str, Any] | None:
    """Train every stage of a run config, resuming from its run directory.

    Args:
        config: run YAML (see configs/).
        overrides: dotted overrides, e.g. optim.lr_init=3e-4 stages.0.tokens=1e9.
        resume: continue from the newest checkpoint in run.out_dir; false refuses a run directory
            that holds checkpoints.
        init_from: start from these weights (a run dir, checkpoint, .pth, ...) with a fresh optimizer.
        print_config: print the resolved config and its derived numbers, then exit.
    """
    cfg = load_config(config, overrides)
    if print_config:
        print(dump_config(cfg) + derived_comment(cfg, stage_plans(cfg)), end="")
        return None
    summary = train_from_config(cfg, resume=resume, init_from=init_from)
    if is_global_zero() and not summary.get("requeued"):  # a requeue said what happens (slurm.py)
        print(describe(summary, cfg, config))
    return summary


def describe(summary: dict[str, Any], cfg: RunConfig, config: str | None = None) -> str:
    """The end of `skein train` in a sentence: what was done, where the checkpoint is, what next."""
    ckpt, n = summary.get("checkpoint"), len(cfg.stages)
    command = f"skein train {config or 'CONFIG'}"
    if summary.get("interrupted"):
        return (
            f"Stopped in stage {summary['stages_done'] + 1} of {n} at step {summary.get('steps', '?')}; "
            f"checkpoint {ckpt}. Run `{command}` again to continue."
        )
    if "steps" not in summary:
        return (
            f"{cfg.run.out_dir} is already finished: all {n} stage(s) are done, the final checkpoint is "
            f"{ckpt}. To train further, start a new run from it: `{command} "
            f"run.out_dir=<new dir> --init_from {ckpt}`."
        )
    return (
        f"Finished {n} stage(s): {summary['steps']:,} steps of the last stage, {summary['tokens']:,} tokens "
        f"in all. Final checkpoint {ckpt}; loss curve {Path(cfg.run.out_dir) / 'loss.png'}."
    )
