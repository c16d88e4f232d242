"""The transformer baseline's own checks (the generic ones are in test_every_arch.py)."""

from __future__ import annotations

import pytest

from skein.rwkv import build_model
from tests.models.harness import TINY


def test_gqa_config_validation() -> None:
    with pytest.raises(ValueError, match="n_kv_head"):
        build_model({**TINY["llama"], "n_kv_head": 3})
