"""The token dtype codes of binidx shards (Megatron's table), the dtype a vocabulary needs, and the
error every reader of a shard raises; shared by the reader (binidx.py) and the token-range scan
(token_range.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

# Megatron dtype codes. Codes 6 and 7 are floats and differ between lineages (fairseq / GPT-NeoX:
# 6 = np.float (float64), 7 = np.double; Megatron-LM core: 6 = float64, 7 = float32); neither can
# hold token ids, so the reader refuses them.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    8: np.dtype(np.uint16),
}
FLOAT_CODES = {6: "float64", 7: "float32 (Megatron-LM) or float64 (GPT-NeoX)"}
# Megatron's rule (`optimal_dtype` / `__best_fitting_dtype`): uint16 below this vocabulary size.
UINT16_VOCAB_LIMIT = 65500


class BinIdxError(ValueError):
    """A .bin/.idx pair that cannot be read as a token dataset; the message names the file."""


def best_dtype(vocab_size: int) -> np.dtype:
    """Token dtype for a vocabulary: uint16 when vocab_size < 65500, else int32 (Megatron's rule)."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def dtype_code(dtype: Any) -> int:
    """Megatron code of an integer token dtype (ValueError for anything else)."""
    dt = np.dtype(dtype)
    for code, known in DTYPE_CODES.items():
        if known == dt:
            return code
    raise ValueError(f"token dtype must be one of {sorted(str(d) for d in DTYPE_CODES.values())}, got {dt}")
