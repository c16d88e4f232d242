"""Argument checks shared by the Triton kernels: every refusal is a ValueError that names the op,
the argument and the value, raised before anything is launched."""

from __future__ import annotations

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MIN_HEAD, MAX_HEAD = 16, 128


def check_device(op: str, interpreted: bool, **tensors: Tensor | None) -> None:
    """All tensors on one device: CUDA, or the CPU when the kernels run in Triton's interpreter."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"{op}: tensors on different devices: {devices}")
    device = next(iter(devices.values()))
    if device.type != "cuda" and not (interpreted and device.type == "cpu"):
        raise ValueError(
            f"{op}: the Triton kernel needs CUDA tensors, got {device.type} "
            "(CPU tensors run only under TRITON_INTERPRET=1, set before triton is imported)"
        )


def check_dtypes(op: str, **tensors: Tensor) -> torch.dtype:
    """One floating dtype among bf16, fp16, fp32 for all the sequence inputs; returns it."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"{op}: inputs must share one dtype, got {dtypes}")
    dtype = next(iter(dtypes.values()))
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"{op}: dtype {dtype} not supported (use one of {KERNEL_DTYPES})")
    return dtype


def check_head_size(op: str, name: str, size: int) -> None:
    """Head sizes are powers of two in [16, 128]: tile shapes of tl.dot and registers bound them."""
    if size < MIN_HEAD or size > MAX_HEAD or size & (size - 1):
        raise ValueError(f"{op}: {name} = {size} must be a power of two in [{MIN_HEAD}, {MAX_HEAD}]")


def check_shape(op: str, name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_length(op: str, T: int) -> None:
    if T < 1:
        raise ValueError(f"{op}: sequence length T = {T} must be at least 1")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for the large products: fp32 inputs keep fp32 accuracy ("ieee");
    bf16/fp16 inputs use TF32 tensor cores, whose 10-bit mantissa exceeds the inputs' own."""
    return "ieee" if dtype == torch.float32 else "tf32"
