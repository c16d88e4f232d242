"""Optimizer parameter groups: weight decay only on 2-D `.weight` matrices, and the learning-rate
multipliers an architecture asks for (e.g. RWKV-7's 2x on att.w0)."""

from __future__ import annotations

from typing import Any

import torch

from skein.rwkv.models import CausalLM


def param_groups(model: CausalLM, weight_decay: float) -> list[dict[str, Any]]:
    """Group parameters by (decay, lr multiplier). Each group carries `lr_mult`, which the
    schedule multiplies into the learning rate at every step."""
    mults = model.lr_multipliers()
    unknown = set(mults) - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"lr_multipliers names unknown parameters: {sorted(unknown)}")
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.dim() == 2 and name.endswith(".weight")
        groups.setdefault((decay, mults.get(name, 1.0)), []).append(p)
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_mult": mult}
        for (decay, mult), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]


def build_optimizer(
    model: CausalLM,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over `param_groups`: the fused CUDA implementation with `fused` on CUDA parameters
    (one kernel for all tensors; not with fp16 loss scaling, see LMModule), else the multi-tensor
    one. (Optimizer states offloaded to the CPU take the engine's own optimizer instead,
    Execution.offloaded_optimizer.)"""
    groups = param_groups(model, weight_decay)
    fused = fused and next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
