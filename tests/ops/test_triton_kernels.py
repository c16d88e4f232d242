"""The Triton kernels (rwkv7 chunk, wkv4 fused, delta_product chunk) against the float64 token
loops on CPU, through Triton's interpreter.

Triton fixes compiled-or-interpreted when a kernel is decorated, and pytest imports every test
module into one process, so the checks (tests/ops/triton_cases.py) run in one child process
started with TRITON_INTERPRET=1; each test here reports one of its cases. The slow compile tests
build each kernel for an H100 (sm_90) in this process, which needs no GPU: they catch code the
interpreter runs but the compiler rejects.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ops.triton_cases import CASES, SLOW_CASES

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install skein[kernels])", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 900


def _selected_cases(session: pytest.Session) -> list[str]:
    here = Path(__file__).resolve()
    names = []
    for item in session.items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        if Path(str(item.path)).resolve() == here and "case" in params:
            names.append(params["case"])
    return names


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> dict[str, dict]:
    names = _selected_cases(request.session)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.ops.triton_cases", *names],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            out[record["case"]] = record
    if proc.returncode != 0 and len(out) < len(names):
        pytest.fail(f"the interpreter process exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return out


def _report(results: dict[str, dict], case: str) -> None:
    assert case in results, f"case {case} produced no result"
    record = results[case]
    assert record["ok"], f"{case} failed:\n{record['error']}"


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference(results: dict[str, dict], case: str) -> None:
    _report(results, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_kernel_realistic_heads(results: dict[str, dict], case: str) -> None:
    _report(results, case)


# kernel module, kernel name, fp32 pointer arguments (other pointers take the input dtype), constexprs, warps
COMPILE_CASES = {
    "rwkv7_fwd": (
        "skein.rwkv.ops.rwkv7.chunk",
        "_rwkv7_fwd_kernel",
        ("s0", "sT", "states"),
        {"K": 64, "V": 64, "BV": 32, "C": 16, "LOG2_C": 4, "HAS_S0": True, "SAVE": True},
        4,
    ),
    "rwkv7_bwd": (
        "skein.rwkv.ops.rwkv7.chunk",
        "_rwkv7_bwd_kernel",
        ("dsT", "states", "dstates", "ds0"),
        {
            "K": 64,
            "V": 64,
            "BV": 64,
            "C": 16,
            "LOG2_C": 4,
            "HAS_DST": True,
            "WANT_DS0": True,
            "MODE": 0,
            "CHUNK_PARALLEL": False,
        },
        8,
    ),
    "rwkv7_bwd_c32_atomic": (
        "skein.rwkv.ops.rwkv7.chunk",
        "_rwkv7_bwd_kernel",
        ("dsT", "states", "dstates", "ds0", "dr", "dw", "dk", "da", "db"),
        {
            "K": 64,
            "V": 64,
            "BV": 32,
            "C": 32,
            "LOG2_C": 5,
            "HAS_DST": True,
            "WANT_DS0": True,
            "MODE": 2,
            "CHUNK_PARALLEL": False,
        },
        4,
    ),
    "rwkv7_bwd_state": (
        "skein.rwkv.ops.rwkv7.chunk",
        "_rwkv7_bwd_state_kernel",
        ("dsT", "dstates", "ds0"),
        {"K": 64, "V": 64, "BV": 32, "C": 16, "LOG2_C": 4, "HAS_DST": True, "WANT_DS0": True},
        4,
    ),
    "rwkv7_bwd_chunk_parallel": (
        "skein.rwkv.ops.rwkv7.chunk",
        "_rwkv7_bwd_kernel",
        ("dsT", "states", "dstates", "ds0"),
        {
            "K": 64,
            "V": 64,
            "BV": 64,
            "C": 16,
            "LOG2_C": 4,
            "HAS_DST": True,
            "WANT_DS0": True,
            "MODE": 0,
            "CHUNK_PARALLEL": True,
        },
        8,
    ),
    "wkv4_fwd": (
        "skein.rwkv.ops.wkv4.fused",
        "_wkv4_fwd_kernel",
        ("w", "u", "aa0", "bb0", "pp0", "aaT", "bbT", "ppT", "ckpt", "seg_state"),
        {"BC": 32, "TB": 8, "HAS_STATE": True, "SAVE": True, "PHASE": 0},
        1,
    ),
    "wkv4_fwd_segment_local": (
        "skein.rwkv.ops.wkv4.fused",
        "_wkv4_fwd_kernel",
        ("w", "u", "aa0", "bb0", "pp0", "aaT", "bbT", "ppT", "ckpt", "seg_state"),
        {"BC": 32, "TB": 8, "HAS_STATE": True, "SAVE": False, "PHASE": 1},
        1,
    ),
    "wkv4_fwd_segment_rerun": (
        "skein.rwkv.ops.wkv4.fused",
        "_wkv4_fwd_kernel",
        ("w", "u", "aa0", "bb0", "pp0", "aaT", "bbT", "ppT", "ckpt", "seg_state"),
        {"BC": 32, "TB": 8, "HAS_STATE": True, "SAVE": True, "PHASE": 2},
        1,
    ),
    "wkv4_seg_combine": (
        "skein.rwkv.ops.wkv4.fused",
        "_wkv4_seg_combine_kernel",
        ("w", "aa0", "bb0", "pp0", "seg_state"),
        {"BC": 32, "HAS_STATE": True},
        1,
    ),
    "wkv4_bwd": (
        "skein.rwkv.ops.wkv4.fused",
        "_wkv4_bwd_kernel",
        ("w", "u", "ckpt", "daaT", "dbbT", "dppT", "dw", "du", "daa0", "dbb0", "dpp0", "seg"),
        {"BC": 32, "TB": 8, "HAS_DST": True, "WANT_DS0": True, "PHASE": 0},
        1,
    ),
    "wkv4_bwd_segment_local": (
        "skein.rwkv.ops.wkv4.fused",
        "_wkv4_bwd_kernel",
        ("w", "u", "ckpt", "daaT", "dbbT", "dppT", "dw", "du", "daa0", "dbb0", "dpp0", "seg"),
        {"BC": 32, "TB": 8, "HAS_DST": True, "WANT_DS0": False, "PHASE": 1},
        1,
    ),
    "wkv4_bwd_segment_rerun": (
        "skein.rwkv.ops.wkv4.fused",
        "_wkv4_bwd_kernel",
        ("w", "u", "ckpt", "daaT", "dbbT", "dppT", "dw", "du", "daa0", "dbb0", "dpp0", "seg"),
        {"BC": 32, "TB": 8, "HAS_DST": True, "WANT_DS0": False, "PHASE": 2},
        1,
    ),
    "wkv4_bwd_seg_combine": (
        "skein.rwkv.ops.wkv4.fused",
        "_wkv4_bwd_seg_combine_kernel",
        ("daaT", "dbbT", "dppT", "daa0", "dbb0", "dpp0", "seg"),
        {"BC": 32, "HAS_DST": True, "WANT_DS0": True},
        1,
    ),
    "delta_product_fwd": (
        "skein.rwkv.ops.delta_product.chunk",
        "_dp_fwd_kernel",
        ("s0", "sT", "states"),
        {
            "K": 64,
            "V": 64,
            "BV": 32,
            "CS": 16,
            "LOG2_CS": 4,
            "NHP": 2,
            "HAS_G": True,
            "HAS_S0": True,
            "SAVE": True,
        },
        4,
    ),
    "delta_product_bwd": (
        "skein.rwkv.ops.delta_product.chunk",
        "_dp_bwd_kernel",
        ("dsT", "states", "dstates", "ds0", "dq", "dk", "dbeta", "dg"),
        {
            "K": 64,
            "V": 64,
            "BV": 32,
            "CS": 32,
            "LOG2_CS": 5,
            "NHP": 2,
            "HAS_G": True,
            "HAS_DST": True,
            "WANT_DS0": True,
            "MODE": 1,
            "CHUNK_PARALLEL": True,
        },
        8,
    ),
    "delta_product_bwd_state": (
        "skein.rwkv.ops.delta_product.chunk",
        "_dp_bwd_state_kernel",
        ("dsT", "dstates", "ds0"),
        {
            "K": 64,
            "V": 64,
            "BV": 32,
            "CS": 16,
            "LOG2_CS": 4,
            "NHP": 2,
            "HAS_G": True,
            "HAS_DST": True,
            "WANT_DS0": True,
        },
        4,
    ),
}
SCALARS = {
    "scale": "fp32",
    "T": "i32",
    "H": "i32",
    "PART": "i32",
    "SEG": "i32",
    "NS": "i32",
    "SEG_LEN": "i32",
    **{f"PART_{x}": "i32" for x in "QKBG"},
    "NH": "i32",
    "C": "i32",
    "B": "i32",
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bf16", "fp32_ones"])
@pytest.mark.parametrize("name", list(COMPILE_CASES))
def test_kernel_compiles_for_sm90(name: str, variant: str) -> None:
    """bf16 inputs; fp32 inputs with T = B = H = n_h = 1, which Triton turns into constants."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 makes every kernel an interpreted function")
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from skein.rwkv.ops.common.kernel_checks import dot_precision

    module, attr, fp32_ptrs, constexprs, warps = COMPILE_CASES[name]
    kernel = getattr(importlib.import_module(module), attr)
    dtype = variant[:4]
    if "PREC" in kernel.arg_names:
        constexprs = {
            **constexprs,
            "PREC": dot_precision(torch.bfloat16 if dtype == "bf16" else torch.float32),
        }
    if variant == "fp32_ones":
        constexprs = {**constexprs, **{a: 1 for a in ("T", "B", "H", "NH") if a in kernel.arg_names}}
    signature = {}
    for arg in kernel.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in SCALARS:
            signature[arg] = SCALARS[arg]
        else:
            signature[arg] = "*fp32" if arg in fp32_ptrs else f"*{dtype}"
    try:
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": warps},
        )
    except (RuntimeError, FileNotFoundError) as e:  # no NVIDIA toolchain in this triton build
        if "ptxas" in str(e).lower() and "error" not in str(e).lower():
            pytest.skip(f"no ptxas for sm_90: {e}")
        raise
    assert compiled.asm.get("cubin"), f"{name}: no cubin produced"
