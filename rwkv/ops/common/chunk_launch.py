"""What the chunked kernels (RWKV-7, DeltaProduct) share on the Python side: the launch parameters
both take, their checks, and the argument preparation before a launch (launch resolution, the
initial state, whether a backward can follow)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import Tensor

from skein.rwkv.ops.common.kernel_checks import check_shape

DOTS = ("auto", "bf16")
"""Operands of a chunked kernel's tile products: "auto" (fp32 tiles, TF32 products for 16-bit
inputs) or "bf16" (tiles rounded to bf16, fp32 accumulation); triton_utils.mm computes both."""

CHUNKS = (16, 32, 64)
"""Chunk sizes the kernels take."""
WARPS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class ChunkLaunch:
    """Launch parameters of a chunked kernel pair (forward and backward); every choice computes
    the same function. Each op subclasses it with its default chunk and extra fields."""

    chunk: int = 16
    """Time steps per chunk: 16, 32 or 64."""
    block_v: int = 0
    """V columns per forward program (power of two, 16..V); 0 means min(V, 64)."""
    bwd_block_v: int = 0
    """V columns per backward program; 0 means all of V (one program per batch and head)."""
    bwd_reduce: str = "sum"
    """How the backward adds the per-V-block parts of the gradients that sum over V, when
    bwd_block_v < V: "sum" (fp32 parts per block, summed after the kernel; deterministic) or
    "atomic" (fp32 atomic adds into one buffer)."""
    bwd_two_pass: bool = False
    """Backward in two passes: a serial one that runs only the reverse state recurrence and
    stores each chunk's dS' (fp32, as large as the saved states), then one program per
    (chunk, V block, batch * head) for every gradient."""
    fwd_warps: int = 4
    bwd_warps: int = 0
    """Warps per backward program; 0 picks from the tile size (bwd_warps_for)."""

    def check(self, V: int, op: str = "chunked kernel") -> None:
        """Raise ValueError, naming `op`, the field and its value, for a choice the kernels do not take."""
        if self.chunk not in CHUNKS:
            raise ValueError(f"{op}: chunk = {self.chunk} must be one of {CHUNKS}")
        for name in ("block_v", "bwd_block_v"):
            bv = getattr(self, name)
            if bv and (bv < 16 or bv > V or bv & (bv - 1)):
                raise ValueError(f"{op}: {name} = {bv} must be a power of two in [16, V = {V}]")
        if self.bwd_reduce not in ("sum", "atomic"):
            raise ValueError(f"{op}: bwd_reduce = {self.bwd_reduce!r} must be 'sum' or 'atomic'")
        for name in ("fwd_warps", "bwd_warps"):
            nw = getattr(self, name)
            if nw and nw not in WARPS:
                raise ValueError(f"{op}: {name} = {nw} must be 1, 2, 4, 8 or 16")

    def bwd_warps_for(self, K: int, BV: int) -> int:
        """Warps of a backward program holding [K, BV] state tiles: bwd_warps, or 4 for tiles up
        to 32 x 32 and 8 above."""
        return self.bwd_warps or (4 if K * BV <= 32 * 32 else 8)


L = TypeVar("L", bound=ChunkLaunch)


def resolve_launch(op: str, launch: L | None, default: L, block_v: int | None, V: int) -> L:
    """The launch a call runs: `launch` or the op's default, with `block_v` overriding its
    forward V block when given, checked against V."""
    launch = launch or default
    if block_v is not None:
        launch = replace(launch, block_v=block_v)
    launch.check(V, op)
    return launch


def prepare_state(op: str, state: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
    """The initial state as the kernels take it: fp32, contiguous, of `shape` ([B, H, K, V])."""
    if state is None:
        return None
    check_shape(op, "state", state, shape)
    if not state.is_floating_point():
        raise ValueError(f"{op}: state must be floating point, got {state.dtype}")
    return state.float().contiguous()


def backward_can_follow(*tensors: Tensor | None) -> bool:
    """Whether autograd may ask for a backward (so the forward must keep its chunk states)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


__all__ = ["CHUNKS", "ChunkLaunch", "backward_can_follow", "prepare_state", "resolve_launch"]
