"""Weight formats: RWKV-LM .pth (rwkv_lm.py), Hugging Face transformers RWKV-4 (hf.py),
flash-linear-attention RWKV-7 / GatedDeltaProduct (fla.py) and skein's safetensors + JSON
(safetensors_file.py). Pure PyTorch: conversions return config dicts and state dicts; writing the
files (atomically) is the trainer-side `skein export`'s job.
"""

from skein.rwkv.convert.common import DTYPES, load_strict, resolve_dtype
from skein.rwkv.convert.fla import to_fla
from skein.rwkv.convert.hf import from_hf, read_hf, to_hf
from skein.rwkv.convert.rwkv_lm import (
    detect_arch,
    fit_layout,
    from_rwkv_lm,
    infer_config,
    model_from_state_dict,
    to_rwkv_lm,
)
from skein.rwkv.convert.safetensors_file import read_safetensors, to_safetensors

__all__ = [
    "DTYPES",
    "detect_arch",
    "fit_layout",
    "from_hf",
    "from_rwkv_lm",
    "infer_config",
    "load_strict",
    "model_from_state_dict",
    "read_hf",
    "read_safetensors",
    "resolve_dtype",
    "to_fla",
    "to_hf",
    "to_rwkv_lm",
    "to_safetensors",
]
