"""The kernel benchmark's registry: every op folder registers its own cases, and without CUDA the
command stops with one line instead of a traceback."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from skein.rwkv.ops.bench import OPS, REGISTRY, BenchError, bench_kernels
from skein.rwkv.ops.common.bench import BenchCase, autograd_runner

OPS_DIR = Path(__file__).resolve().parents[2] / "rwkv" / "ops"


def test_every_op_folder_registers_its_cases() -> None:
    folders = {p.parent.name for p in OPS_DIR.glob("*/bench.py") if p.parent.name != "common"}
    assert {m.split(".")[-2] for m in OPS} == folders
    for module in OPS:
        cases = importlib.import_module(module).CASES
        assert cases and all(isinstance(c, BenchCase) for c in cases)
        assert all(REGISTRY[c.name] is c for c in cases)
        assert any(not c.peer for c in cases), f"{module} registers no skein kernel"


def test_autograd_runner_floor_and_gradients() -> None:
    x = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(5, 4, requires_grad=True)
    runner = autograd_runner(lambda: (x @ w,), [x, w])
    assert runner.floor_fwd == (15 + 20 + 12) * 4
    gx, gw = runner.fwd_bwd()
    assert gx.shape == x.shape and gw.shape == w.shape and gx.abs().sum() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_bench_kernels_without_cuda_is_one_line() -> None:
    from skein.train.errors import explain

    with pytest.raises(BenchError) as info:
        bench_kernels(B=1, T=16)
    assert explain(info.value) == str(info.value) and "CUDA" in str(info.value)
