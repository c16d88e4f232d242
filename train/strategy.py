"""How a stage runs on the hardware: the Lightning strategy (DeepSpeed ZeRO, DDP or one device),
the precision, and gradient checkpointing and torch.compile of the model's blocks (applied from
outside the model, so parameter names and the state-dict layout stay those of the reference
layouts)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from skein.rwkv.models import CausalLM
from skein.train.config import TrainerSection


def use_gpu(tc: TrainerSection) -> bool:
    if tc.accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("trainer.accelerator=gpu, but no CUDA device is visible")
    return tc.accelerator == "gpu" or (tc.accelerator == "auto" and torch.cuda.is_available())


def build_strategy(tc: TrainerSection) -> dict[str, Any]:
    """Keyword arguments for L.Trainer: accelerator, devices, num_nodes, strategy, precision."""
    gpu = use_gpu(tc)
    world = tc.devices * tc.num_nodes
    kind = tc.strategy
    if kind == "auto":
        kind = "deepspeed" if gpu else ("ddp" if world > 1 else "single")
    if kind == "deepspeed" and not gpu:
        raise ValueError("trainer.strategy=deepspeed needs GPUs; use ddp or single on the CPU")
    if kind == "single" and world > 1:
        raise ValueError(f"trainer.strategy=single with {world} processes; use ddp or deepspeed")
    precision = tc.precision if tc.precision != "auto" else ("bf16-mixed" if gpu else "32")
    if kind == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        strategy: Any = DeepSpeedStrategy(
            stage=tc.zero_stage,
            offload_optimizer=tc.offload_optimizer,
            allgather_bucket_size=int(2e8),
            reduce_bucket_size=int(2e8),
        )
    elif kind == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="nccl" if gpu else "gloo")
    else:
        strategy = "auto"
    return {
        "accelerator": "gpu" if gpu else "cpu",
        "devices": tc.devices,
        "num_nodes": tc.num_nodes,
        "strategy": strategy,
        "precision": precision,
    }


def is_deepspeed(strategy: Any) -> bool:
    """True for Lightning's DeepSpeedStrategy (checked by name: deepspeed is an optional extra)."""
    return type(strategy).__name__ == "DeepSpeedStrategy"


def apply_compile(model: CausalLM, backend: str = "inductor") -> None:
    """torch.compile each block's forward in place (the modules, their parameter names and the
    state-dict layout are unchanged). With gradient checkpointing (applied before or after) the
    checkpoint wraps the compiled forward, so the backward pass recomputes through the compiled
    graph. Blocks of one architecture share code, so they share compiled graphs."""
    for block in model.blocks:
        if getattr(block, "_skein_compiled", False):
            continue
        attr = "_skein_inner" if getattr(block, "_skein_checkpointed", False) else "forward"
        setattr(block, attr, torch.compile(getattr(block, attr), backend=backend, dynamic=False))
        block._skein_compiled = True


def apply_grad_checkpointing(model: CausalLM) -> None:
    """Recompute each block in the backward pass (non-reentrant checkpointing, so any positional
    signature and tuple outputs work, with DeepSpeed, the custom kernels and a compiled forward)."""
    for block in model.blocks:
        if getattr(block, "_skein_checkpointed", False):
            continue
        block._skein_inner = block.forward
        block.forward = functools.partial(_checkpointed, block)
        block._skein_checkpointed = True


def _checkpointed(block: torch.nn.Module, *args: Any) -> Any:
    return checkpoint(block._skein_inner, *args, use_reentrant=False)
