"""Backend names and the rule that picks one for a call.

A backend is named after the file that implements it in rwkv/ops/<op>/: `naive` (naive.py, the
fp32 token loop), `parallel` (parallel.py, the pure-PyTorch chunked/parallel form), `triton`
(chunk.py or fused.py, the GPU kernels). `auto` takes the fastest one that can run on the tensors'
device (the GPU kernel on CUDA, the parallel form elsewhere). Any explicit choice that cannot run
raises: there is no silent fallback.
"""

from __future__ import annotations

from typing import Literal

import torch

Backend = Literal["auto", "parallel", "naive", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "parallel", "naive", "triton")
RENAMED: dict[str, str] = {"torch": "parallel", "recurrent": "naive"}
"""Former backend names and what they are called now."""


def check_backend_name(backend: str, where: str) -> None:
    """Raise a ValueError naming `where` unless `backend` is one of BACKENDS; a former name gets
    its new name in the message."""
    if backend in RENAMED:
        raise ValueError(
            f"{where}={backend!r} is now called {RENAMED[backend]!r}; write {where}={RENAMED[backend]}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"{where} must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(op: str, backend: str, device: torch.device, gpu_backends: tuple[str, ...] = ()) -> str:
    """Return the concrete backend for `op` on `device`, or raise a ValueError saying why not.

    Args:
        op: the op's name, for messages.
        backend: one of BACKENDS.
        device: where the inputs live.
        gpu_backends: the GPU kernels this op has, fastest first.
    """
    check_backend_name(backend, f"{op} backend")
    if backend == "auto":
        if device.type == "cuda" and gpu_backends:
            return gpu_backends[0]
        return "parallel"
    if backend == "triton":
        if backend not in gpu_backends:
            have = ", ".join(gpu_backends) or "none"
            raise ValueError(f"{op}: no {backend} kernel (GPU kernels for this op: {have})")
        if device.type != "cuda":
            import os

            if os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError(
                    f"{op}: the {backend} kernel needs CUDA tensors, got {device.type} "
                    "(use backend='parallel' or 'auto' on CPU; Triton also runs with TRITON_INTERPRET=1)"
                )
    return backend
