"""Losses: next-token cross entropy and RWKV's L2Wrap logit regulariser, in two forms.

`lm_loss` takes logits [B, T, V]. `fused_lm_loss` takes the final hidden states and the head
weight instead, and computes head matmul, cross entropy and L2Wrap in chunks of rows: each chunk's
logits exist (in float32) only while that chunk is processed, and its gradients with respect to the
hidden states and the head weight are computed right there, so the full [B T, V] float32 logits
(4 B T V bytes; 2 GiB at 8192 tokens and a 65536 vocabulary) are never allocated. Both forms give the
same loss and the same gradients within float32 rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

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


def _ce_chunk(raw: Tensor, yc: Tensor, n: int, want_grad: bool, want_top: bool) -> tuple[Tensor, ...]:
    """One chunk of head outputs raw [c, V] (the matmul's dtype) against targets yc [c]: the sum of
    its cross entropies (float32); with `want_grad`, d mean-loss / d raw in raw's dtype; with
    `want_top`, each row's largest raw logit (float32) and its index."""
    logits = raw.float()
    lse = torch.logsumexp(logits, dim=-1)
    total = (lse - logits.gather(1, yc[:, None]).squeeze(1)).sum()
    if not want_grad:
        return (total,)
    top = raw.max(dim=-1) if want_top else None  # before the in-place softmax below
    # d loss / d logits = (softmax - onehot) / N
    g = logits.sub_(lse[:, None]).exp_()
    g[torch.arange(len(yc), device=g.device), yc] -= 1.0
    g = g.div_(n).to(raw.dtype)  # the logits' dtype, as the autograd of .float() would cast it
    return (total, g) if top is None else (total, g, top.values.float(), top.indices)


@functools.cache
def _compiled_ce_chunk() -> Callable[..., tuple[Tensor, ...]]:
    return torch.compile(_ce_chunk, dynamic=False)


def ce_chunk_fn(compiled: bool) -> Callable[..., tuple[Tensor, ...]]:
    """_ce_chunk, or its torch.compile'd form (made once): its elementwise passes over the [c, V]
    logits (upcast, logsumexp, softmax, one-hot, scale, downcast) become two fused kernels that read
    the head output twice and write the gradient once, instead of about ten full passes."""
    return _compiled_ce_chunk() if compiled else _ce_chunk


class _FusedHeadLoss(torch.autograd.Function):
    """loss = mean_n CE(h_n W^T, y_n); the cross-entropy gradients are formed chunk by chunk in the
    forward pass and scaled by the incoming gradient in the backward pass (the loss is a scalar).
    L2Wrap's term, like _L2Wrap's, is not scaled by the incoming gradient: it touches one logit per
    row, so the backward pass adds it from the saved argmax indices and maxima."""

    @staticmethod
    def forward(
        ctx, h: Tensor, weight: Tensor, targets: Tensor, l2wrap: float, chunk: int, compiled: bool
    ) -> Tensor:
        # h: [N, C]; weight: [V, C]; targets: [N]. Under autocast the head matmul runs in the autocast
        # dtype, exactly as nn.Linear would; everything after it is float32.
        n = h.shape[0]
        dt = torch.get_autocast_dtype("cuda" if h.is_cuda else "cpu") if _autocast_on(h) else h.dtype
        w = weight.to(dt)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        top = torch.zeros(n, dtype=torch.float32, device=h.device) if l2wrap > 0 else None
        idx = torch.zeros(n, dtype=torch.long, device=h.device) if l2wrap > 0 else None
        ce = ce_chunk_fn(compiled)
        for s in range(0, n, chunk):
            hc, yc = h[s : s + chunk].to(dt), targets[s : s + chunk]
            raw = hc @ w.t()  # [c, V] in the matmul dtype, as F.linear's output
            out = ce(raw, yc, n, need_grad, need_grad and l2wrap > 0)
            total += out[0]
            if not need_grad:
                continue
            g = out[1]
            if l2wrap > 0:
                top[s : s + chunk], idx[s : s + chunk] = out[2], out[3]
            grad_h[s : s + chunk] = (g @ w).to(h.dtype)
            grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w, h, weight, top, idx)
        ctx.scale, ctx.dt = l2wrap / n, dt
        return total / n

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_h, grad_w, h, weight, top, idx = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype)
        gw = grad_w * grad_loss
        if top is not None:
            # L2Wrap: d/d logit[n, idx_n] = scale * max_n, in the logits' dtype
            coef = (top * ctx.scale).to(ctx.dt)[:, None]
            gh += (coef * weight.to(ctx.dt)[idx]).to(gh.dtype)
            gw.index_add_(0, idx, (coef * h.to(ctx.dt)).float())
        gh = gh if ctx.needs_input_grad[0] else None
        gw = gw.to(weight.dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None


def _autocast_on(h: Tensor) -> bool:
    return torch.is_autocast_enabled("cuda" if h.is_cuda else "cpu")


def fused_lm_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    l2wrap: float = 0.0,
    chunk_tokens: int = 4096,
    compiled: bool = False,
) -> Tensor:
    """lm_loss(hidden @ weight^T, targets, l2wrap) without the whole logits tensor.

    Args:
        hidden: [B, T, C], the final-norm output.
        weight: [V, C], the head weight.
        targets: [B, T] token ids.
        l2wrap: L2Wrap factor (0 disables).
        chunk_tokens: rows of logits formed at once (memory: chunk_tokens * V * 4 bytes, a few times).
        compiled: run each chunk's cross entropy and gradient through torch.compile (ce_chunk_fn).
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    h = hidden.flatten(0, 1)
    y = targets.flatten()
    if not torch.is_grad_enabled():
        l2wrap = 0.0
    return _FusedHeadLoss.apply(h, weight, y, float(l2wrap), int(chunk_tokens), bool(compiled))


def model_loss(
    model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    l2wrap: float = 0.0,
    chunk_tokens: int | None = None,
    state: object = None,
    compiled: bool = False,
) -> tuple[Tensor, object]:
    """The loss of a skein model on tokens x [B, T] against targets y [B, T] from `state`, and its
    final state: with `chunk_tokens`, the fused chunked head + cross entropy on the model's hidden
    states (no whole logits tensor; its per-chunk work compiled with `compiled`), else the logits
    and lm_loss."""
    if chunk_tokens:
        h, state = model.hidden(x, state)
        return fused_lm_loss(h, model.head.weight, y, l2wrap, chunk_tokens, compiled), state
    logits, state = model(x, state)
    return lm_loss(logits, y, l2wrap), state
