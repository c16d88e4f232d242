"""One stage's model and Lightning Trainer, built the same way for `skein train` (loop/run.py) and
`skein bench train` (commands/bench.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from skein.rwkv.models import CausalLM, build_model
from skein.train.checkpoints.checkpoint import DirectCheckpointIO
from skein.train.checkpoints.weights import load_into
from skein.train.config import RunConfig
from skein.train.parallel.blocks import apply_compile, apply_grad_checkpointing
from skein.train.parallel.execution import Execution, resolve_execution
from skein.train.plan import StagePlan


def build_training_model(
    cfg: RunConfig,
    weights: tuple[dict[str, torch.Tensor], str] | None = None,
    execution: Execution | None = None,
) -> CausalLM:
    """The model as a stage trains it: seeded initialisation (or `weights`, a state dict and where it
    came from), then gradient checkpointing and torch.compile as the trainer section asks
    (`execution`: the run's; None resolves cfg.trainer on this machine)."""
    execution = execution or resolve_execution(cfg.trainer)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    model = build_model(cfg.model)
    if weights is not None:
        sd, source = weights
        load_into(model, sd, source)
    if cfg.trainer.grad_checkpointing:
        apply_grad_checkpointing(model, selective=cfg.trainer.grad_checkpointing == "selective")
    if execution.compile:
        apply_compile(model, mode=cfg.trainer.compile_mode)
    return model


def step_args(cfg: RunConfig, plan: StagePlan, execution: Execution) -> dict[str, Any]:
    """The L.Trainer arguments that shape an optimizer step (accumulation, clipping) and switch
    off what a stage does not use (Lightning's own checkpoints, validation, bars, summaries).
    Lightning clips only where the engine clips inside its step; elsewhere LMModule clips in
    on_before_optimizer_step."""
    return {
        "max_epochs": -1,
        "accumulate_grad_batches": plan.accumulate,
        "gradient_clip_val": (cfg.optim.grad_clip or None) if execution.engine_clips else None,
        "use_distributed_sampler": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "deterministic": cfg.trainer.deterministic,
    }


def build_stage_trainer(
    cfg: RunConfig,
    plan: StagePlan,
    execution: Execution,
    out_dir: str | Path,
    callbacks: list[L.Callback],
    max_steps: int | None = None,
    logger: Any = False,
    plugins: Sequence[Any] = (),
) -> L.Trainer:
    """The Lightning Trainer of one stage: `execution`'s accelerator, strategy and precision, the
    plan's accumulation, `max_steps` (None: the plan's steps), and checkpoints written directly
    where the engine does not write its own shards."""
    checkpoint_io = [] if execution.checkpoint_format == "shards" else [DirectCheckpointIO()]
    return L.Trainer(
        **execution.trainer_kwargs(),
        **step_args(cfg, plan, execution),
        max_steps=plan.steps if max_steps is None else max_steps,
        logger=logger,
        callbacks=callbacks,
        plugins=[*plugins, *checkpoint_io],
        default_root_dir=str(out_dir),
    )
