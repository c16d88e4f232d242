"""Argument checks shared by the Triton kernels: every refusal is a ValueError that names the op,
the argument and the value, raised before anything is launched."""

from __future__ import annotations

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MIN_HEAD, MAX_HEAD = 16, 128


def head_piece(size: int) -> int:
    """The largest power of two in [MIN_HEAD, MAX_HEAD] dividing `size` (a kernel head size that
    tiles it), or `size` itself when none does (the kernel's check then refuses it)."""
    piece = MAX_HEAD
    while piece >= MIN_HEAD and size % piece:
        piece //= 2
    return piece if piece >= MIN_HEAD else size


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


def check_dtypes(op: str, **tensors: Tensor | None) -> None:
    """Each input is bf16, fp16 or fp32 (they may differ: kernels load every tile as fp32)."""
    for name, t in tensors.items():
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}; use one of {KERNEL_DTYPES}")


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
    """tl.dot input precision for the tile products. fp32 inputs: "tf32x3" (three TF32 tensor-core
    products per dot, ~fp32 accuracy; the FMA "ieee" path needs far more registers); bf16/fp16
    inputs: "tf32", whose 10-bit mantissa exceeds the inputs' own 7 or 10 bits."""
    return "tf32x3" if dtype == torch.float32 else "tf32"
