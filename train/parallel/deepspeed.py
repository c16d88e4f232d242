"""The DeepSpeed engine's calls, made only through parallel/execution.py: its Lightning strategy,
its CPU Adam for offloaded optimizer states, its gradient norm, its release between stages, and
the consolidation of its ZeRO checkpoint directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def deepspeed_strategy(zero_stage: int, offload_optimizer: bool) -> Any:
    """Lightning's DeepSpeedStrategy at this ZeRO stage (200M-element buckets)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(
        stage=zero_stage,
        offload_optimizer=offload_optimizer,
        allgather_bucket_size=int(2e8),
        reduce_bucket_size=int(2e8),
    )


def cpu_adam(
    groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float
) -> torch.optim.Optimizer:
    """DeepSpeed's CPU Adam in AdamW mode (ZeRO-Offload needs it)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)


def engine_grad_norm(strategy: Any) -> Any:
    """The global gradient norm the engine measured before clipping in its last step."""
    return strategy.deepspeed_engine.get_global_grad_norm()


def release_engine(strategy: Any) -> None:
    """Remove the gradient hooks a DeepSpeed engine put on the model's parameters. The next stage
    builds a new engine on the same model; with the old hooks still there, each gradient is
    reduced by the first engine and then found missing by the second."""
    strategy.deepspeed_engine.destroy()


def consolidate(path: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a ZeRO checkpoint directory, gathered on the CPU (keys of the bare
    LightningModule, `model.` prefixed)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(str(path))
    return {k.removeprefix("_forward_module."): v for k, v in sd.items()}
