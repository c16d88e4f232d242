"""Gradient checkpointing and torch.compile of a model's blocks, applied from outside the model, so
parameter names and the state-dict layout stay those of the reference layouts. Which operators a
selective checkpoint keeps is the model's own trait (`CausalLM.saved_ops`)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from skein.rwkv.models import CausalLM


def apply_compile(model: CausalLM, backend: str = "inductor", mode: str = "default") -> None:
    """torch.compile each block's forward in place (the modules, their parameter names and the
    state-dict layout are unchanged), in torch.compile's `mode` (Inductor only). With gradient
    checkpointing (applied before or after) the compiled graph holds the checkpoint: Dynamo traces
    it as a region to recompute, and the backward graph recomputes it (a checkpoint around a
    compiled forward instead replays the compiled function under saved-tensor hooks, which Dynamo
    may run as a different graph the second time). Blocks of one architecture share code, so they
    share compiled graphs."""
    # Inductor's mix-order reduction (torch >= 2.10, Triton only) fuses a row reduction (a norm's
    # backward) with the column reduction of a broadcast parameter's gradient (the [1, 1, C]
    # mixing vectors summed over batch and time); on CUDA it returns those gradients as [C]
    # ("invalid gradient ... got [768] but expected shape compatible with [1, 1, 768]") or wrong
    # (pytorch/pytorch#178080, #193061). Off for skein's blocks.
    # torch.compile takes a mode or options, not both: the mode's options are merged in.
    options = (
        {**torch._inductor.list_mode_options(mode), "triton.mix_order_reduction": False}
        if backend == "inductor"
        else None
    )
    # Graphs per block code: first block or not, with or without gradients (segments, validation),
    # and each stage's shapes; past Dynamo's default limit of 8 the remaining calls run eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for block in model.blocks:
        if getattr(block, "_skein_compile", None) is None:
            block._skein_compile = {"backend": backend, "dynamic": False, "options": options}
            _wrap(block)


def uses_cuda_graphs(model: CausalLM) -> bool:
    """Whether apply_compile gave the blocks a mode that replays them as CUDA graphs."""
    args = getattr(model.blocks[0], "_skein_compile", None) if len(model.blocks) else None
    return bool(args and (args["options"] or {}).get("triton.cudagraphs"))


def begin_graph_step(model: CausalLM) -> None:
    """Tell torch's CUDA-graph trees that a new forward pass (a micro-batch, an evaluation batch)
    starts, so that outputs of the previous one may be overwritten; nothing without CUDA graphs."""
    if uses_cuda_graphs(model):
        torch.compiler.cudagraph_mark_step_begin()


def apply_grad_checkpointing(model: CausalLM, selective: bool = False) -> None:
    """Recompute each block in the backward pass (non-reentrant checkpointing, so any positional
    signature and tuple outputs work, with sharded engines, the custom kernels and torch.compile).
    `selective` keeps the outputs of the operators in `model.saved_ops` and recomputes the rest."""
    for block in model.blocks:
        if not getattr(block, "_skein_checkpointed", False):
            block._skein_checkpointed = "selective" if selective else True
            block._skein_saved_ops = model.saved_ops
            _wrap(block)


def _wrap(block: torch.nn.Module) -> None:
    """block.forward = compile(checkpoint(the block's own forward)), each part as asked."""
    if not hasattr(block, "_skein_inner"):
        block._skein_inner = block.forward
    fn = (
        functools.partial(_checkpointed, block)
        if getattr(block, "_skein_checkpointed", False)
        else block._skein_inner
    )
    compile_args = getattr(block, "_skein_compile", None)
    block.forward = torch.compile(fn, **compile_args) if compile_args else fn


def _keep_saved_ops(saved: frozenset[str], ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op.name() in saved else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpointed(block: torch.nn.Module, *args: Any) -> Any:
    if block._skein_checkpointed == "selective":
        policy = functools.partial(_keep_saved_ops, block._skein_saved_ops)
        context = functools.partial(create_selective_checkpoint_contexts, policy)
        return checkpoint(block._skein_inner, *args, use_reentrant=False, context_fn=context)
    return checkpoint(block._skein_inner, *args, use_reentrant=False)
