"""scripts/gpu_kernel_sweep.py's CPU parts: the shapes its --shapes value names."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_kernel_sweep", ROOT / "scripts" / "gpu_kernel_sweep.py")
sweep = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(sweep)


def test_shapes_by_name_and_by_size() -> None:
    rng = random.Random(8)
    dims = [(rng.randint(1, 16), rng.choice((512, 1024, 4096)), rng.randint(1, 64)) for _ in range(3)]
    spec = ",".join(["large", *(f"{b}x{t}x{h}" for b, t, h in dims), " small "])
    shapes = sweep.rwkv7_shapes(spec)
    want = [sweep.NAMED_SHAPES["large"], *dims, sweep.NAMED_SHAPES["small"]]
    assert [(s.B, s.T, s.H) for s in shapes] == want
    assert all(s.K == 64 and s.dtype == torch.bfloat16 for s in shapes)


@pytest.mark.parametrize("bad", ["huge", "2x4096", "2x4096x32x1", "ax4096x32"])
def test_a_shape_it_cannot_read_is_named(bad: str) -> None:
    with pytest.raises(SystemExit, match=f"--shapes '{bad}': use large, small or BxTxH"):
        sweep.rwkv7_shapes(f"large,{bad}")
