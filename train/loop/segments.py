"""Segment-wise training: a sample of ctx_len tokens runs as consecutive segments with the
recurrent state carried from each to the next, inside one forward and one backward.

Each segment is one autograd node (`_Segment`). Its forward runs the segment without building a
graph and keeps only the segment's incoming state; its backward runs the segment again with
gradients on and returns the gradients of the parameters and of the incoming state
(torch.autograd.grad, so nothing is accumulated into .grad there). The autograd engine calls the
segments' backwards last first, since a segment is ready only once the gradient of its outgoing
state has arrived, and sums each parameter's gradients from all segments before accumulating them
once. Activation memory is therefore that of one segment plus the carried states, whatever ctx_len,
and the caller sees one loss and does one backward: gradient accumulation, clipping, mixed
precision, DDP and ZeRO-1/2 (whose gradient hooks fire once per parameter and backward)
work as they do for whole sequences. Block-level checkpointing nests inside, and compiled blocks
stay compiled: the forward and the recompute are separate calls of the block (without and with
gradients), never matched tensor by tensor.

Under ZeRO-3 the parameters exist only while their module runs, so a segment cannot take them as
inputs; there each segment runs under non-reentrant activation checkpointing instead, with blocks
run eagerly (the checkpoint's forward and recompute must save the same tensors, and a compiled
block may run as a different graph in the recompute).

Truncated backpropagation through time: the state is detached after every `bptt` segments, so the
gradient of a segment's loss reaches back into the earlier segments of its group of `bptt` and no
further; bptt = 0 keeps the graph through every segment, the exact gradient of the whole sequence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from skein.rwkv.models.common import CausalLM, State, detach_state, map_state
from skein.train.loop.losses import model_loss

Run = Callable[[State | None], tuple[Tensor, State]]


def _owned(t: Tensor) -> Tensor:
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def compact_state(state: Any) -> Any:
    """Copy every state tensor that is a view into a larger buffer (a token shift is the last
    token of a [B, T, C] activation), so a carried state does not keep that activation alive."""
    return map_state(_owned, state)


def _autocast_now() -> list[tuple[str, bool, torch.dtype]]:
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cuda", "cpu")]


class _Segment(torch.autograd.Function):
    """One segment: forward without a graph, recomputed with one in the backward. Inputs are the
    incoming state's tensors, then the parameters; outputs the loss, then the outgoing state's
    tensors (their structure goes to `out`, a list the caller reads)."""

    @staticmethod
    def forward(ctx: Any, run: Run, spec: Any, out: list, n_state: int, *inputs: Tensor) -> Any:
        ctx.run, ctx.spec, ctx.autocast = run, spec, _autocast_now()
        ctx.params = inputs[n_state:]
        ctx.save_for_backward(*inputs[:n_state])
        ctx.set_materialize_grads(False)
        loss, state = run(tree_unflatten(list(inputs[:n_state]), spec))
        leaves, out_spec = tree_flatten(compact_state(state))
        out.append(out_spec)
        return (loss, *leaves)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, *grad_state: Tensor | None) -> Any:
        lead = len(ctx.needs_input_grad) - len(ctx.saved_tensors) - len(ctx.params)  # run .. n_state
        wants = ctx.needs_input_grad[lead:]
        state_in = [
            s if s is None else s.detach().requires_grad_(w) for s, w in zip(ctx.saved_tensors, wants)
        ]
        with torch.enable_grad(), contextlib.ExitStack() as mixed_precision:
            for device, enabled, dtype in ctx.autocast:  # as in the forward
                mixed_precision.enter_context(torch.autocast(device, enabled=enabled, dtype=dtype))
            loss, state = ctx.run(tree_unflatten(state_in, ctx.spec))
        outs, grads = [], []
        for o, g in zip([loss, *tree_flatten(state)[0]], [grad_loss, *grad_state]):
            if g is not None and isinstance(o, Tensor) and o.requires_grad:
                outs.append(o)
                grads.append(g)
        inputs = [*state_in, *ctx.params]
        wrt = [i for i, w in enumerate(wants) if w]
        got = torch.autograd.grad(outs, [inputs[i] for i in wrt], grads, allow_unused=True) if outs else []
        result: list[Tensor | None] = [None] * len(inputs)
        for i, g in zip(wrt, got):
            result[i] = g
        return (*[None] * lead, *result)


def _checkpointed_segment(run: Run, state: State | None) -> tuple[Tensor, State]:
    def step(state: State | None) -> tuple[Tensor, State]:
        with torch.compiler.set_stance("force_eager"):
            loss, state = run(state)
        return loss, compact_state(state)

    return checkpoint(step, state, use_reentrant=False)


def segmented_loss(
    model: CausalLM,
    x: Tensor,
    y: Tensor,
    segment_len: int,
    bptt: int,
    l2wrap: float = 0.0,
    chunk_tokens: int | None = None,
    partitioned_params: bool = False,
    compiled: bool = False,
) -> Tensor:
    """Mean next-token loss of `model` on x [B, T] against targets y [B, T], run in segments of
    `segment_len` tokens (which must divide T) with the state carried across them.

    The value equals `lm_loss(model(x)[0], y, l2wrap)`. With bptt = 0 so does the gradient (up to
    rounding); with bptt = k the state is detached after segments k, 2k, ... (bptt = 1: every
    segment trains on a detached incoming state). The L2Wrap factor is spread over the segments so
    that its gradient, like the loss, is that of the whole sequence. `chunk_tokens` selects the
    fused chunked head + cross entropy inside each segment (train/loop/losses.py model_loss).
    `partitioned_params` (ZeRO-3, Execution.partitioned_params) runs segments under activation checkpointing;
    `compiled` compiles the fused loss's per-chunk work (losses.ce_chunk_fn).
    """
    T = x.shape[1]
    if segment_len <= 0 or T % segment_len:
        raise ValueError(f"segment_len={segment_len} must be positive and divide the sequence length {T}")
    if bptt < 0:
        raise ValueError(f"bptt={bptt} must be >= 0 (0: through every segment)")
    n = T // segment_len
    params = [p for p in model.parameters() if p.requires_grad]
    losses, state = [], None
    for i in range(n):
        sl = slice(i * segment_len, (i + 1) * segment_len)

        def run(s: State | None, xs: Tensor = x[:, sl], ys: Tensor = y[:, sl]) -> tuple[Tensor, State]:
            return model_loss(model, xs, ys, l2wrap / n, chunk_tokens, s, compiled)

        if partitioned_params:
            loss, state = _checkpointed_segment(run, state)
        else:
            leaves, spec = tree_flatten(state)
            out: list = []
            loss, *new = _Segment.apply(run, spec, out, len(leaves), *leaves, *params)
            state = tree_unflatten(new, out[0])
        losses.append(loss)
        if bptt and (i + 1) % bptt == 0:
            state = detach_state(state)
    return torch.stack(losses).sum() / n
