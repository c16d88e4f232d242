"""Triton pieces shared by the chunked kernels: the unit-lower-triangular inverse, the check
that tells compiled kernels from interpreted ones, and the V-split of the forward grid. Imported only by the kernel modules."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
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


def block_v_for(heads: int, V: int, device: torch.device) -> int:
    """V columns per forward program of the chunked kernels: split V until there are about two
    programs per SM."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    bv = V
    while bv > 32 and heads * (V // bv) < 2 * sms:
        bv //= 2
    return bv
