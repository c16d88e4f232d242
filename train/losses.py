"""Losses: next-token cross entropy and RWKV's L2Wrap logit regulariser."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _L2Wrap(torch.autograd.Function):
    """Identity on the loss; in the backward pass adds factor * max_logit to the gradient of each
    position's largest logit, which keeps logits from drifting upwards (RWKV-LM's L2Wrap)."""

    @staticmethod
    def forward(ctx, loss: Tensor, logits: Tensor, factor: float) -> Tensor:
        ctx.save_for_backward(logits)
        ctx.factor = factor
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        (logits,) = ctx.saved_tensors
        factor = ctx.factor / (logits.shape[0] * logits.shape[1])
        top, idx = logits.max(dim=-1, keepdim=True)
        grad = torch.zeros_like(logits).scatter_(-1, idx, top * factor)
        return grad_loss, grad, None


def lm_loss(logits: Tensor, targets: Tensor, l2wrap: float = 0.0) -> Tensor:
    """Mean cross entropy of logits [B, T, V] against targets [B, T], with optional L2Wrap."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    if l2wrap > 0 and torch.is_grad_enabled():
        loss = _L2Wrap.apply(loss, logits, l2wrap)
    return loss
