"""What every format converter shares: the dtype names, CPU copies of a state dict, and the strict
load that names every missing, unexpected or mis-shaped key (never a partial load)."""

from __future__ import annotations

import torch
from torch import Tensor

from skein.rwkv.models import CausalLM

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

MAX_LISTED = 8
"""Keys listed per kind of problem in a load error (the count of the rest is given)."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """torch dtype of "fp32", "bf16" or "fp16" (a torch.dtype passes through)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not one of {sorted(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def cpu_tensor(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous CPU copy; floating-point tensors are cast to `dtype`, others keep theirs."""
    t = t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype)
    return t.contiguous().clone()


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return f"{keys[:MAX_LISTED]}{more}"


def load_strict(model: CausalLM, sd: dict[str, Tensor], source: str, assign: bool = False) -> CausalLM:
    """Load `sd` into `model` only when its keys and shapes are exactly the model's.

    Raises a ValueError naming the missing keys, the unexpected keys and every shape mismatch
    (key: file shape vs model shape); nothing is loaded then. Values are cast to the model's dtypes.
    With assign, the (cast) tensors of `sd` become the parameters instead of being copied into
    them: for a model built on the meta device.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [
        f"{k}: {tuple(sd[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listed(unexpected)}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:MAX_LISTED]))
        raise ValueError(f"{source} does not fit model.arch={model.config.arch}: " + ", ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, assign=assign)
    return model
