"""RWKV-7 kernels of other projects, for running side by side with skein's in benchmarks: wind_rwkv's
chunked CUDA kernel and RWKV-LM's rwkv7_clampw_v3 (and its `_alt` variant), each loaded from a
directory the user gives (their sources are not part of skein) and built on first use.

Each peer computes RWKV-7's recurrence with skein's r, k, v, a, b (the same a, b roles; its state is
the transpose of skein's [K, V]) but its own decay argument; `to_skein_w` maps it back to skein's
log decay, so a float64 token loop can check the peer on exactly the inputs it ran:

- wind_rwkv: decay = exp(-exp(w)), so skein's w = -exp(w_wind); state in and out, bf16, T % 16 == 0.
- RWKV-LM clampw_v3: decay = exp(-exp(-0.5) * sigmoid(w)), so skein's w = -exp(-0.5) * sigmoid(w_lm);
  no state in or out, bf16, T % 16 == 0, chunk 16.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

RWKV_LM_SOURCES = {
    "v3": ("rwkv7_clampw_v3.cpp", "rwkv7_clampw_v3_for_h100.cu"),
    "alt": ("rwkv7_clampw_v3.cpp", "rwkv7_clampw_v3_for_h100_alt.cu"),
}
"""Files of RWKV-LM's RWKV-v7/train_temp/cuda for each variant of its H100 kernel."""
RWKV_LM_CHUNK = 16
_RWKV_LM_NAMESPACE = "rwkv7_clampw_v3"
_LOG_W_SCALE = -0.5
"""RWKV-LM's kernels scale the sigmoid of w by -exp(-0.5)."""


@dataclass(frozen=True)
class Rwkv7Peer:
    """A peer kernel as a differentiable function of its own inputs."""

    name: str
    inputs: dict[str, Tensor]
    """r, w, k, v, a, b as the peer takes them: leaf tensors, skein's except w."""
    run: Callable[..., list[Tensor]]
    """run(r=, w=, k=, v=, a=, b=) -> [o]; autograd reaches every input."""
    to_skein_w: Callable[[Tensor], Tensor]
    """The peer's w -> skein's log decay (differentiable, any float dtype)."""


def _require(x: dict[str, Tensor], who: str) -> None:
    r = x["r"]
    if any(t.dtype != torch.bfloat16 for t in x.values()) or r.shape[1] % 16:
        raise ValueError(f"{who} takes bf16 inputs with T % 16 == 0 (got {r.dtype}, T = {r.shape[1]})")
    if not r.is_cuda:
        raise ValueError(f"{who} is a CUDA kernel")


def _leaves(x: dict[str, Tensor], w: Tensor) -> dict[str, Tensor]:
    out = {n: t.detach() for n, t in x.items()}
    out["w"] = w.to(x["w"].dtype)
    return {n: t.contiguous().requires_grad_() for n, t in out.items()}


_wind_head_size: int | None = None


def wind_rwkv_peer(repo: str, x: dict[str, Tensor]) -> Rwkv7Peer:
    """wind_rwkv's `chunked_cuda` kernel from a checkout of github.com/johanwind/wind_rwkv at
    `repo`, on skein's inputs `x` (r, w, k, v, a, b; w is skein's log decay)."""
    global _wind_head_size
    _require(x, "wind_rwkv chunked_cuda")
    root = Path(repo)
    if not (root / "wind_rwkv" / "rwkv7" / "chunked_cuda" / "chunked_cuda.cu").is_file():
        raise FileNotFoundError(
            f"{repo}: no wind_rwkv/rwkv7/chunked_cuda/chunked_cuda.cu (a wind_rwkv checkout)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from wind_rwkv.rwkv7.chunked_cuda.chunked_cuda import attn_chunked_cuda, load_chunked_cuda

    K = x["r"].shape[-1]
    if _wind_head_size not in (None, K):
        raise ValueError(
            f"wind_rwkv chunked_cuda was built for head size {_wind_head_size} in this process, not {K}"
        )
    load_chunked_cuda(K)
    _wind_head_size = K

    def run(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> list[Tensor]:
        return [attn_chunked_cuda(r, w, k, v, a, b)[0]]

    return Rwkv7Peer("wind_rwkv chunked_cuda", _leaves(x, wind_w_from_skein(x["w"])), run, wind_w_to_skein)


def wind_w_from_skein(w: Tensor) -> Tensor:
    """skein's log decay -> wind_rwkv's w (decay = exp(-exp(w))), in fp32 (float64 kept)."""
    return torch.log(-w.detach().to(torch.promote_types(w.dtype, torch.float32)))


def wind_w_to_skein(w: Tensor) -> Tensor:
    """wind_rwkv's w -> skein's log decay."""
    return -torch.exp(w)


def load_rwkv_lm(cuda_dir: str, variant: str, head_size: int) -> object:
    """Build RWKV-LM's clampw_v3 kernel (`variant` "v3" or "alt") from `cuda_dir` (its
    RWKV-v7/train_temp/cuda) and return its op namespace. Both variants share one C++ binding
    that registers the namespace rwkv7_clampw_v3; the alt is built from a copy of the binding
    registering rwkv7_clampw_v3_alt, so the two load into one process."""
    from torch.utils.cpp_extension import load

    if variant not in RWKV_LM_SOURCES:
        raise ValueError(f"RWKV-LM variant {variant!r}: use one of {sorted(RWKV_LM_SOURCES)}")
    cpp, cu = (Path(cuda_dir) / f for f in RWKV_LM_SOURCES[variant])
    missing = [str(p) for p in (cpp, cu) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing {missing} (RWKV-LM's RWKV-v7/train_temp/cuda)")
    namespace = _RWKV_LM_NAMESPACE if variant == "v3" else f"{_RWKV_LM_NAMESPACE}_{variant}"
    if variant != "v3":
        binding = cpp.read_text().replace(
            f"TORCH_LIBRARY({_RWKV_LM_NAMESPACE},", f"TORCH_LIBRARY({namespace},"
        )
        if f"TORCH_LIBRARY({namespace}," not in binding:
            raise ValueError(f"{cpp}: no TORCH_LIBRARY({_RWKV_LM_NAMESPACE}, ...) to rename")
        cpp = Path(tempfile.gettempdir()) / "skein-peers" / namespace / cpp.name
        if not cpp.is_file() or cpp.read_text() != binding:  # unchanged: the built extension is reused
            cpp.parent.mkdir(parents=True, exist_ok=True)
            cpp.write_text(binding)
    load(
        name=f"{namespace}_n{head_size}",
        sources=[str(cpp), str(cu)],
        is_python_module=False,
        extra_cuda_cflags=[
            "-res-usage", "--use_fast_math", "-O3", "-Xptxas -O3", "--extra-device-vectorization",
            f"-D_N_={head_size}", f"-D_CHUNK_LEN_={RWKV_LM_CHUNK}",
        ],
    )  # fmt: skip
    return getattr(torch.ops, namespace)


class _ClampwFunction(torch.autograd.Function):
    """RWKV-LM's forward / backward ops as an autograd function (as its model.py wraps them)."""

    @staticmethod
    def forward(ctx, ops, r, w, k, v, a, b):  # type: ignore[override]
        B, T, H, N = r.shape
        y = torch.empty_like(v)
        s = torch.empty(B, H, T // RWKV_LM_CHUNK, N, N, device=r.device, dtype=torch.float32)
        sa = torch.empty(B, T, H, N, device=r.device, dtype=torch.float32)
        ops.forward(r, w, k, v, a, b, y, s, sa)
        ctx.ops = ops
        ctx.save_for_backward(r, w, k, v, a, b, s, sa)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        r, w, k, v, a, b, s, sa = ctx.saved_tensors
        grads = [torch.empty_like(t) for t in (r, w, k, v, a, b)]
        ctx.ops.backward(r, w, k, v, a, b, dy.to(torch.bfloat16).contiguous(), s, sa, *grads)
        return None, *grads


def rwkv_lm_peer(cuda_dir: str, x: dict[str, Tensor], variant: str = "v3") -> Rwkv7Peer:
    """RWKV-LM's rwkv7_clampw_v3 (`variant` "v3", or "alt": rwkv7_clampw_v3_for_h100_alt.cu) on
    skein's inputs `x`, with w given as the sigmoid argument that reproduces skein's decay."""
    _require(x, f"RWKV-LM rwkv7_clampw_v3 ({variant})")
    ops = load_rwkv_lm(cuda_dir, variant, x["r"].shape[-1])

    def run(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> list[Tensor]:
        return [_ClampwFunction.apply(ops, r, w, k, v, a, b)]

    name = "RWKV-LM clampw_v3" + ("" if variant == "v3" else f" {variant}")
    return Rwkv7Peer(name, _leaves(x, rwkv_lm_w_from_skein(x["w"])), run, rwkv_lm_w_to_skein)


def rwkv_lm_w_from_skein(w: Tensor) -> Tensor:
    """skein's log decay -> RWKV-LM clampw's w: logit(-w e^{0.5}), kept inside the open interval
    (RWKV-LM's decay cannot reach 0 or exp(-exp(-0.5))); fp32 (float64 kept)."""
    w = w.detach().to(torch.promote_types(w.dtype, torch.float32))
    return torch.logit((-w * math.exp(-_LOG_W_SCALE)).clamp(1e-6, 1 - 1e-6))


def rwkv_lm_w_to_skein(w: Tensor) -> Tensor:
    """RWKV-LM clampw's w -> skein's log decay."""
    return -math.exp(_LOG_W_SCALE) * torch.sigmoid(w)


__all__ = [
    "RWKV_LM_SOURCES",
    "Rwkv7Peer",
    "load_rwkv_lm",
    "rwkv_lm_peer",
    "rwkv_lm_w_from_skein",
    "rwkv_lm_w_to_skein",
    "wind_rwkv_peer",
    "wind_w_from_skein",
    "wind_w_to_skein",
]
