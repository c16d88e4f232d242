"""How a stage runs on the hardware: the Lightning strategy (DeepSpeed ZeRO, DDP or one device),
the precision, and gradient checkpointing and torch.compile of the model's blocks (applied from
outside the model, so parameter names and the state-dict layout stay those of the reference
layouts)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from skein.rwkv.models import CausalLM
from skein.train.config import TrainerSection


def use_gpu(tc: TrainerSection) -> bool:
    if tc.accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("trainer.accelerator=gpu, but no CUDA device is visible")
    return tc.accelerator == "gpu" or (tc.accelerator == "auto" and torch.cuda.is_available())


def resolve_strategy(tc: TrainerSection, gpu: bool) -> str:
    """trainer.strategy with `auto` resolved: DeepSpeed ZeRO on several GPUs, DDP for several CPU
    processes, else one device. On one GPU ZeRO partitions nothing, and its optimizer path (flat
    buffer copies, fp32 master update) cost 69 ms a step where one device's fused AdamW takes 9
    (docs/perf.md)."""
    if tc.strategy != "auto":
        return tc.strategy
    if tc.devices * tc.num_nodes == 1:
        return "single"
    return "deepspeed" if gpu else "ddp"


def resolve_compile(tc: TrainerSection) -> bool:
    """trainer.compile with `auto` resolved: on with GPUs, off on the CPU."""
    return use_gpu(tc) if tc.compile == "auto" else tc.compile


def resolve_precision(tc: TrainerSection, gpu: bool) -> str:
    """trainer.precision with `auto` resolved: bf16-mixed on GPUs, 32 on the CPU."""
    return tc.precision if tc.precision != "auto" else ("bf16-mixed" if gpu else "32")


def build_strategy(tc: TrainerSection) -> dict[str, Any]:
    """Keyword arguments for L.Trainer: accelerator, devices, num_nodes, strategy, precision."""
    gpu = use_gpu(tc)
    world = tc.devices * tc.num_nodes
    kind = resolve_strategy(tc, gpu)
    if kind == "deepspeed" and not gpu:
        raise ValueError("trainer.strategy=deepspeed needs GPUs; use ddp or single on the CPU")
    if kind == "single" and world > 1:
        raise ValueError(f"trainer.strategy=single with {world} processes; use ddp or deepspeed")
    precision = resolve_precision(tc, gpu)
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


def release_engine(strategy: Any) -> None:
    """Remove the gradient hooks a DeepSpeed engine put on the model's parameters. The next stage
    builds a new engine on the same model; with the old hooks still there, each gradient is
    reduced by the first engine and then found missing by the second."""
    if is_deepspeed(strategy):
        strategy.deepspeed_engine.destroy()


def apply_compile(model: CausalLM, backend: str = "inductor") -> None:
    """torch.compile each block's forward in place (the modules, their parameter names and the
    state-dict layout are unchanged). With gradient checkpointing (applied before or after) the
    compiled graph holds the checkpoint: Dynamo traces it as a region to recompute, and the
    backward graph recomputes it (a checkpoint around a compiled forward instead replays the
    compiled function under saved-tensor hooks, which Dynamo may run as a different graph the
    second time). Blocks of one architecture share code, so they share compiled graphs."""
    # Inductor's mix-order reduction (torch >= 2.10, Triton only) fuses a row reduction (a norm's
    # backward) with the column reduction of a broadcast parameter's gradient (the [1, 1, C]
    # mixing vectors summed over batch and time); on CUDA it returns those gradients as [C]
    # ("invalid gradient ... got [768] but expected shape compatible with [1, 1, 768]") or wrong
    # (pytorch/pytorch#178080, #193061). Off for skein's blocks.
    options = {"triton.mix_order_reduction": False} if backend == "inductor" else None
    # Graphs per block code: first block or not, with or without gradients (segments, validation),
    # and each stage's shapes; past Dynamo's default limit of 8 the remaining calls run eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for block in model.blocks:
        if getattr(block, "_skein_compile", None) is None:
            block._skein_compile = {"backend": backend, "dynamic": False, "options": options}
            _wrap(block)


def apply_grad_checkpointing(model: CausalLM, selective: bool = False) -> None:
    """Recompute each block in the backward pass (non-reentrant checkpointing, so any positional
    signature and tuple outputs work, with DeepSpeed, the custom kernels and torch.compile).
    `selective` keeps the outputs of the operators in SAVED_OPS and recomputes the rest."""
    for block in model.blocks:
        if not getattr(block, "_skein_checkpointed", False):
            block._skein_checkpointed = "selective" if selective else True
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


# Operators whose outputs selective checkpointing keeps: the matmuls, attention and the recurrence
# kernels' forwards, the costly part of a block's recompute.
SAVED_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::_scaled_dot_product_flash_attention",
        "aten::_scaled_dot_product_efficient_attention",
        "aten::_scaled_dot_product_cudnn_attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "skein::rwkv7_fwd",
        "skein::delta_product_fwd",
        "skein::wkv4_fwd",
    }
)


def _keep_saved_ops(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op.name() in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpointed(block: torch.nn.Module, *args: Any) -> Any:
    if block._skein_checkpointed == "selective":
        context = functools.partial(create_selective_checkpoint_contexts, _keep_saved_ops)
        return checkpoint(block._skein_inner, *args, use_reentrant=False, context_fn=context)
    return checkpoint(block._skein_inner, *args, use_reentrant=False)
