"""`skein train`: runs the stages of a run config in order, resuming from the run directory.

Each stage is one Lightning `fit` with its own context length, batch, learning rates and token
budget; the weights flow from one stage to the next (with a fresh optimizer, as context-extension
finetunes do). A restart finds the newest complete checkpoint in <out_dir>/checkpoints and goes on
from there: inside a stage, model, optimizer, schedule, step and data position come back exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from skein.rwkv.models import build_model
from skein.train.callbacks import CheckpointCallback, MetricsCallback, SnapshotCallback
from skein.train.checkpoint import latest_checkpoint, load_weights
from skein.train.config import ConfigError, RunConfig, dump_config, load_config
from skein.train.data_module import StageDataModule
from skein.train.evaluation import PeriodicEval, ValidationLoss
from skein.train.module import LMModule, StagePlan
from skein.train.plots import plot_loss_curve
from skein.train.preflight import check_run
from skein.train.strategy import apply_grad_checkpointing, build_strategy, is_deepspeed
from skein.train.weights import load_into, load_source

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def train_from_config(
    cfg: RunConfig,
    resume: bool = True,
    init_from: str | None = None,
    extra_callbacks: list[L.Callback] | None = None,
) -> dict[str, Any]:
    """Run (or continue) every stage of `cfg`. Returns a summary: stages done, steps, tokens,
    whether the run was interrupted by a signal, and the last checkpoint. `extra_callbacks` join
    every stage (e.g. a PeriodicEval with more evaluators)."""
    out_dir = Path(cfg.run.out_dir)
    check_run(cfg)  # data, tokenizer, vocabulary, hardware: before anything is built or written
    found = latest_checkpoint(out_dir)
    if found is not None and not resume:
        raise ConfigError(
            f"{out_dir} already holds checkpoints (newest {found[0].name}); pass --resume to continue it, "
            "or choose another run.out_dir"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_config(cfg))

    world = cfg.trainer.devices * cfg.trainer.num_nodes
    plans = [StagePlan(s, world) for s in cfg.stages]
    start_stage, ckpt_path, start_step = 0, None, 0
    weights: tuple[dict[str, torch.Tensor], str] | None = None
    if found is not None:
        path, meta = found
        if meta["stage_done"]:
            start_stage = meta["stage_index"] + 1
            weights = (load_weights(path), str(path))
        else:
            start_stage, ckpt_path, start_step = meta["stage_index"], path / "model.ckpt", meta["step"]
    elif init_from is not None:  # any source `skein export` reads: run dir, checkpoint, .pth, ...
        weights = (load_source(init_from).model.state_dict(), init_from)

    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    model = build_model(cfg.model)
    if weights is not None:
        sd, source = weights
        load_into(model, sd, source)
    if cfg.trainer.grad_checkpointing:
        apply_grad_checkpointing(model)

    summary: dict[str, Any] = {"interrupted": False, "stages_done": start_stage, "checkpoint": None}
    for si in range(start_stage, len(cfg.stages)):
        stage, plan = cfg.stages[si], plans[si]
        tokens_before = sum(p.steps * p.tokens_per_step for p in plans[:si])
        hw = build_strategy(cfg.trainer)
        if stage.segmented and is_deepspeed(hw["strategy"]):
            raise ValueError(
                f"stages[{si}].segment_len: segment-wise training runs with trainer.strategy ddp or single"
            )
        ckpt_cb = CheckpointCallback(
            out_dir, cfg.checkpoint.every_steps, cfg.checkpoint.keep_last, tokens_before
        )
        callbacks: list[L.Callback] = [
            MetricsCallback(
                out_dir, cfg.log.every_steps, tokens_before, cfg.log.peak_tflops, cfg.log.progress_bar
            ),
        ]
        if cfg.checkpoint.snapshot_every_steps:
            dtype = DTYPES[cfg.checkpoint.snapshot_dtype]
            callbacks.append(SnapshotCallback(out_dir, cfg.checkpoint.snapshot_every_steps, dtype))
        if cfg.eval.every_steps:
            val = ValidationLoss(
                cfg.eval.val, stage.ctx_len, cfg.eval.val_samples, cfg.eval.micro_bsz, cfg.run.seed
            )
            callbacks.append(PeriodicEval(out_dir, cfg.eval.every_steps, tokens_before, [val]))
        callbacks += extra_callbacks or []
        # Last: a checkpoint is published only after every row its step logs is on disk, so a
        # kill right after the save loses no metrics the resume would not write again.
        callbacks.append(ckpt_cb)
        module = LMModule(cfg, si, world, model)
        automatic = module.automatic_optimization
        trainer = L.Trainer(
            **hw,
            max_steps=plan.steps,
            max_epochs=-1,
            accumulate_grad_batches=plan.accumulate if automatic else 1,
            gradient_clip_val=(cfg.optim.grad_clip or None) if automatic else None,
            use_distributed_sampler=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            logger=_loggers(cfg, out_dir) or False,
            callbacks=callbacks,
            default_root_dir=str(out_dir),
            deterministic=cfg.trainer.deterministic,
        )
        data = StageDataModule(cfg, stage.ctx_len, stage.micro_bsz, plan.global_batch, start_step)
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
        ckpt_cb.save_stage_end(trainer, module)
        summary.update(steps=trainer.global_step, tokens=tokens_before + module.tokens_seen)
        ckpt_path, start_step = None, 0
        if ckpt_cb.interrupted:
            summary["interrupted"] = True
            break
        summary["stages_done"] = si + 1
    found = latest_checkpoint(out_dir)
    summary["checkpoint"] = str(found[0]) if found else None
    metrics = out_dir / "metrics.csv"
    if metrics.exists() and int(os.environ.get("RANK", "0")) == 0:
        plot_loss_curve(metrics, out_dir / "loss.png")
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
        print(dump_config(cfg, derived=True), end="")
        return None
    summary = train_from_config(cfg, resume=resume, init_from=init_from)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
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
