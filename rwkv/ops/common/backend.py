"""Backend names and the rule that picks one for a call.

`auto` takes the fastest kernel that can run on the tensors' device (a GPU kernel on CUDA, the
pure-PyTorch chunked form elsewhere). Any explicit choice that cannot run raises: there is no
silent fallback.
"""

from __future__ import annotations

from typing import Literal

import torch

Backend = Literal["auto", "torch", "recurrent", "triton", "cuda"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "recurrent", "triton", "cuda")


def resolve_backend(op: str, backend: str, device: torch.device, gpu_backends: tuple[str, ...] = ()) -> str:
    """Return the concrete backend for `op` on `device`, or raise a ValueError saying why not.

    Args:
        op: the op's name, for messages.
        backend: one of BACKENDS.
        device: where the inputs live.
        gpu_backends: the GPU kernels this op has, fastest first.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda" and gpu_backends:
            return gpu_backends[0]
        return "torch"
    if backend in ("triton", "cuda"):
        if backend not in gpu_backends:
            have = ", ".join(gpu_backends) or "none"
            raise ValueError(f"{op}: no {backend} kernel (GPU kernels for this op: {have})")
        if device.type != "cuda":
            import os

            if not (backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"):
                raise ValueError(
                    f"{op}: the {backend} kernel needs CUDA tensors, got {device.type} "
                    "(use backend='torch' or 'auto' on CPU; Triton also runs with TRITON_INTERPRET=1)"
                )
    return backend
