"""Triton pieces shared by the chunked kernels: the unit-lower-triangular inverse, the store of
a gradient that is summed over V blocks, the check that tells compiled kernels from interpreted
ones, and the V-split of the forward grid. Imported only by the kernel modules."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction


def is_interpreted(kernel: object) -> bool:
    """True when `kernel` was decorated under TRITON_INTERPRET=1 (it then runs on CPU tensors)."""
    return isinstance(kernel, InterpretedFunction)


@triton.jit
def tri_inverse(L, N: tl.constexpr, LOG2_N: tl.constexpr):
    """(I - L)^-1 for a strictly lower-triangular fp32 [N, N] tile L.

    L is nilpotent (L^N = 0), so (I - L)^-1 = sum_j L^j = (I + L)(I + L^2)(I + L^4)...(I + L^{N/2}):
    log2(N) - 1 squarings and as many products, all on tensor cores in fp32.
    """
    rows = tl.arange(0, N)
    eye = (rows[:, None] == rows[None, :]).to(tl.float32)
    inv = eye + L
    power = L
    for _ in tl.static_range(LOG2_N - 1):
        power = tl.dot(power, power, input_precision="ieee")
        inv = inv + tl.dot(inv, power, input_precision="ieee")
    return inv


@triton.jit
def mm(a, b, PREC: tl.constexpr):
    """a @ b on tensor cores, accumulated in fp32: with PREC "bf16" the operands are rounded to
    bf16 first (twice the tensor-core rate of TF32, half the operand registers); otherwise fp32
    operands at tl.dot's input_precision PREC ("tf32", "tf32x3", "ieee")."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif PREC == "bf16_ieee":
        # the same products for Triton's CPU interpreter, whose bf16 tl.dot is wrong: a product
        # of two bf16 values is exact in fp32
        a16 = a.to(tl.bfloat16).to(tl.float32)
        return tl.dot(a16, b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def store_part(ptr, offs, x, mask, part, MODE: tl.constexpr):
    """Store a gradient tile of which each V block holds one part. MODE 0 (one V block): the
    gradient itself, in the output dtype. MODE 1: this block's fp32 part, `part` elements
    further on (the parts are summed afterwards). MODE 2: fp32 atomic adds into one buffer."""
    if MODE == 0:
        tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)
    elif MODE == 1:
        tl.store(ptr + part + offs, x, mask=mask)
    else:
        tl.atomic_add(ptr + offs, x, mask=mask)


def reduce_mode(blocks: int, atomic: bool) -> int:
    """The store_part MODE for a backward split into `blocks` V blocks."""
    return 0 if blocks == 1 else (2 if atomic else 1)


def grad_parts(like: Tensor, blocks: int, mode: int) -> Tensor:
    """The buffer a store_part gradient is written to: like `like` (MODE 0), fp32 with a leading
    block dimension (MODE 1), or fp32 zeros (MODE 2)."""
    if mode == 0:
        return torch.empty_like(like)
    if mode == 1:
        return like.new_empty((blocks, *like.shape), dtype=torch.float32)
    return torch.zeros_like(like, dtype=torch.float32)


def sum_parts(buf: Tensor, like: Tensor, mode: int) -> Tensor:
    """The gradient from a grad_parts buffer, in `like`'s dtype."""
    return (buf.sum(0) if mode == 1 else buf).to(like.dtype)


def block_v_for(V: int) -> int:
    """V columns per forward program of the chunked kernels when none is asked for: all of V up
    to 64. Splitting V into more programs costs more than it gains: each V block reloads the
    chunk's inputs and recomputes its [C, C] products (an H200, RWKV-7 bf16 at B=8 T=4096 H=32
    K=64: 1.53 ms with V = 64 in one program, 2.70 ms with two, 5.74 ms with four)."""
    return min(V, 64)
