"""Segment-wise training: a sample of ctx_len tokens runs as consecutive segments with the
recurrent state carried from each to the next, inside one forward and one backward.

Each segment's forward and its loss run under non-reentrant activation checkpointing, so the
forward keeps only each segment's inputs (its tokens and incoming state) and a scalar loss, never
its activations or logits. The backward recomputes the segments one at a time, last first (the
autograd engine runs the most recently created nodes first, and a segment's graph only becomes
ready once the gradient of its outgoing state has arrived). Activation memory is therefore that of
one segment plus the carried states, whatever ctx_len. The caller sees one loss and does one
backward, so gradient accumulation, clipping, mixed precision and DeepSpeed ZeRO (whose gradient
hooks fire once per parameter and backward) work as they do for whole sequences. Block-level
checkpointing nests inside: the segment's recompute then keeps only block inputs, and each block is
recomputed once more in its own backward. Blocks compiled with torch.compile run eagerly here (see
_segment).

Truncated backpropagation through time: the state is detached after every `bptt` segments, so the
gradient of a segment's loss reaches back into the earlier segments of its group of `bptt` and no
further; bptt = 0 keeps the graph through every segment, the exact gradient of the whole sequence.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from skein.rwkv.models.common import CausalLM, State, detach_state, map_state
from skein.train.losses import model_loss


def _owned(t: Tensor) -> Tensor:
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def compact_state(state: Any) -> Any:
    """Copy every state tensor that is a view into a larger buffer (a token shift is the last
    token of a [B, T, C] activation), so a carried state does not keep that activation alive."""
    return map_state(_owned, state)


def _segment(
    model: CausalLM, x: Tensor, y: Tensor, state: State | None, l2wrap: float, chunk_tokens: int | None
) -> tuple[Tensor, State]:
    # This function is both the checkpoint's forward and its recompute, and the two must save the
    # same tensors. The recompute runs with Dynamo disabled, where a compiled block may run eagerly
    # (seen on CUDA: 338 tensors saved in the forward, 84 in the recompute), so compiled blocks run
    # eagerly in both.
    with torch.compiler.set_stance("force_eager"):
        loss, state = model_loss(model, x, y, l2wrap, chunk_tokens, state)
    return loss, compact_state(state)


def segmented_loss(
    model: CausalLM,
    x: Tensor,
    y: Tensor,
    segment_len: int,
    bptt: int,
    l2wrap: float = 0.0,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Mean next-token loss of `model` on x [B, T] against targets y [B, T], run in segments of
    `segment_len` tokens (which must divide T) with the state carried across them.

    The value equals `lm_loss(model(x)[0], y, l2wrap)`. With bptt = 0 so does the gradient (up to
    rounding); with bptt = k the state is detached after segments k, 2k, ... (bptt = 1: every
    segment trains on a detached incoming state). The L2Wrap factor is spread over the segments so
    that its gradient, like the loss, is that of the whole sequence. `chunk_tokens` selects the
    fused chunked head + cross entropy inside each segment (train/losses.py model_loss).
    """
    T = x.shape[1]
    if segment_len <= 0 or T % segment_len:
        raise ValueError(f"segment_len={segment_len} must be positive and divide the sequence length {T}")
    if bptt < 0:
        raise ValueError(f"bptt={bptt} must be >= 0 (0: through every segment)")
    n = T // segment_len
    step = functools.partial(_segment, model)
    losses, state = [], None
    for i in range(n):
        sl = slice(i * segment_len, (i + 1) * segment_len)
        loss, state = checkpoint(
            step, x[:, sl], y[:, sl], state, l2wrap / n, chunk_tokens, use_reentrant=False
        )
        losses.append(loss)
        if bptt and (i + 1) % bptt == 0:
            state = detach_state(state)
    return torch.stack(losses).sum() / n
