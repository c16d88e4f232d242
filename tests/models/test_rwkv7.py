"""RWKV-7: RWKV-LM's x070 tensor layout and init, the documented parameter count, bf16 autocast,
and equality with the official `rwkv` package's x070 forward (the generic checks:
test_every_arch.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from skein.rwkv import build_model
from skein.rwkv.models.rwkv7 import RWKV7Config
from tests.models.harness import TINY as TINY_CONFIGS
from tests.models.harness import (
    perturb_parameters,
    random_tokens,
)
from tests.utils import assert_close

TINY = TINY_CONFIGS["rwkv7"]
# Distinct widths everywhere, so a swapped shape cannot go unnoticed.
ODD = {
    **TINY,
    "n_layer": 3,
    "d_ffn": 384,
    "decay_lora": 32,
    "iclr_lora": 64,
    "value_lora": 16,
    "gate_lora": 48,
}


def expected_x070_layout(C: int, L: int, W: int, H: int, N: int, F: int, dw: int, da: int, dv: int, dg: int):
    """RWKV-LM x070 tensors (as REFERENCE.md lists them for the 1.5B model), in general form."""
    out = {"emb.weight": (W, C), "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (W, C)}
    for i in range(L):
        p = f"blocks.{i}."
        lns = ["ln1", "ln2"] + (["ln0"] if i == 0 else [])
        for ln in lns:
            out[p + ln + ".weight"] = out[p + ln + ".bias"] = (C,)
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            out[p + "att." + name] = (1, 1, C)
        loras = {"w": dw, "a": da, "g": dg} | ({"v": dv} if i >= 1 else {})
        for z, d in loras.items():
            out[p + f"att.{z}1"], out[p + f"att.{z}2"] = (C, d), (d, C)
        if i >= 1:
            out[p + "att.v0"] = (1, 1, C)
        out[p + "att.r_k"] = (H, N)
        for lin in ("receptance", "key", "value", "output"):
            out[p + f"att.{lin}.weight"] = (C, C)
        out[p + "att.ln_x.weight"] = out[p + "att.ln_x.bias"] = (C,)
        out[p + "ffn.x_k"] = (1, 1, C)
        out[p + "ffn.key.weight"], out[p + "ffn.value.weight"] = (F, C), (C, F)
    return out


def test_state_dict_is_the_x070_layout() -> None:
    model = build_model(ODD)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_x070_layout(C=128, L=3, W=97, H=4, N=32, F=384, dw=32, da=64, dv=16, dg=48)


def test_default_widths_follow_rwkv_lm() -> None:
    """REFERENCE.md's 1.5B (L24-D2048) shapes: w1 [C, 96], a1 [C, 96], v1 [C, 64], g1 [C, 256], ffn 4C."""
    cfg = RWKV7Config(d_model=2048, n_layer=24)
    assert (cfg.decay_lora, cfg.iclr_lora, cfg.value_lora, cfg.gate_lora, cfg.d_ffn) == (
        96,
        96,
        64,
        256,
        8192,
    )
    small = RWKV7Config(d_model=768)
    assert (small.decay_lora, small.iclr_lora, small.value_lora, small.gate_lora) == (64, 64, 32, 128)


def test_zero_init_tensors() -> None:
    model = build_model(ODD)
    zero = (
        "att.w1",
        "att.a1",
        "att.a0",
        "att.v1",
        "att.g1",
        "att.output.weight",
        "ffn.value.weight",
        "att.r_k",
    )
    nonzero = (
        "att.w2",
        "att.a2",
        "att.v2",
        "att.g2",
        "att.receptance.weight",
        "att.key.weight",
        "ffn.key.weight",
    )
    for name, p in model.named_parameters():
        if name.endswith(zero):
            assert torch.count_nonzero(p) == 0, f"{name} is not zero at init"
        if name.endswith(nonzero):
            assert torch.count_nonzero(p) == p.numel(), f"{name} has zeros at init"


def test_init_follows_rwkv_lm_schedule() -> None:
    model = build_model(ODD)
    C, L = 128, 3
    first, last = model.blocks[0].att, model.blocks[-1].att
    # w0 = -6.5 + 5 (c / (C - 1))^(0.85 + r0^0.5): -6.5 at channel 0, -1.5 at the last channel.
    assert torch.allclose(first.w0[0, 0, [0, -1]], torch.tensor([-6.5, -1.5]))
    assert torch.allclose(last.w0[0, 0, [0, -1]], torch.tensor([-6.5, -1.5]))
    assert torch.allclose(first.w0[0, 0, C // 2], torch.tensor(-6.5 + 5 * (64 / 127) ** 0.85))
    assert torch.allclose(last.x_v[0, 0, 0], torch.tensor(1 - 0.6))  # 1 - (0 + 0.6 r0), r0 = 1
    assert torch.allclose(last.ln_x.weight, torch.ones(C))
    assert torch.allclose(first.ln_x.weight, torch.full((C,), (1 / L) ** 0.7))
    assert torch.allclose(model.blocks[1].att.v0, torch.ones(1, 1, C))


def test_num_params_matches_documented_formula() -> None:
    """docs/models/rwkv7.md: total = 2 W C + 4 C + L (4 C^2 + 2 C F + 2 C (Dw + Da + Dg) + 18 C)
    + (L - 1)(2 C Dv + C)."""
    for cfg in (TINY, ODD):
        model = build_model(cfg)
        c = model.config
        C, L, W, F = c.d_model, c.n_layer, c.vocab_size, c.d_ffn
        per_layer = 4 * C * C + 2 * C * F + 2 * C * (c.decay_lora + c.iclr_lora + c.gate_lora) + 18 * C
        total = 2 * W * C + 4 * C + L * per_layer + (L - 1) * (2 * C * c.value_lora + C)
        assert model.num_params() == total
        assert model.num_params(exclude_embedding=True) == total - W * C


def test_flops_and_lr_multipliers() -> None:
    model = build_model(ODD)
    c = model.config
    expected = 6 * (model.num_params() - c.vocab_size * c.d_model) + 27 * c.n_layer * c.d_model * c.head_size
    assert model.flops_per_token(512) == expected
    assert model.lr_multipliers() == {f"blocks.{i}.att.w0": 2.0 for i in range(c.n_layer)}


def test_bf16_autocast_keeps_fp32_state() -> None:
    model = build_model(TINY)
    perturb_parameters(model)
    idx = random_tokens(TINY["vocab_size"], T=21)
    ref, _ = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(idx)
    assert logits.dtype == torch.bfloat16
    assert all(s[1].dtype == torch.float32 for s in state)
    assert_close(logits.float(), ref.detach(), 5e-2, "bf16 logits")
    logits.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="head_size"):
        RWKV7Config(d_model=96, head_size=64)
    with pytest.raises(ValueError, match="gate_lora"):
        RWKV7Config(d_model=128, head_size=32, gate_lora=0)
    with pytest.raises(ValueError, match="ln_x_eps"):
        RWKV7Config(d_model=128, head_size=32, ln_x_eps=0.0)
    with pytest.raises(ValueError, match="kernel_dots='tf32' must be one of auto, bf16"):
        RWKV7Config(d_model=128, head_size=32, kernel_dots="tf32")


@pytest.mark.parametrize("dots", ["auto", "bf16"])
def test_kernel_dots_reaches_the_recurrence(dots: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import skein.rwkv.models.rwkv7 as m

    seen, real = [], m.rwkv7

    def spy(*args, **kw):
        seen.append((kw["backend"], kw["dots"]))
        return real(*args, **kw)

    monkeypatch.setattr(m, "rwkv7", spy)
    torch.manual_seed(0)
    model = build_model({**TINY, "kernel_dots": dots})
    ref = build_model(TINY)
    ref.load_state_dict(model.state_dict())
    idx = random_tokens(TINY["vocab_size"], 2, 24)
    out, _ = model(idx)
    assert seen == [("auto", dots)] * TINY["n_layer"]
    # the PyTorch forms compute the same function whatever the GPU kernel's operands would be
    assert torch.equal(out, ref(idx)[0])


@pytest.mark.gpu
def test_kernel_dots_bf16_on_the_gpu_stays_close() -> None:
    torch.manual_seed(0)
    cfg = {**TINY, "d_model": 256, "head_size": 64, "n_layer": 2}
    auto = build_model(cfg).cuda()
    perturb_parameters(auto, 0.1)
    bf16 = build_model({**cfg, "kernel_dots": "bf16"}).cuda()
    bf16.load_state_dict(auto.state_dict())
    idx = random_tokens(cfg["vocab_size"], 4, 256).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = auto(idx)[0].float(), bf16(idx)[0].float()
    assert not torch.equal(a, b)  # the bf16 operands were used
    assert (a - b).norm() / a.norm() < 3e-2


OFFICIAL = textwrap.dedent(
    """
    import os, sys, torch
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    from rwkv.model import RWKV
    model = RWKV(model=sys.argv[1], strategy="cpu fp32")
    idx = torch.load(sys.argv[2]).tolist()
    logits, state = model.forward(idx, None, full_output=True)
    torch.save({"logits": logits, "state": state}, sys.argv[3])
    """
)


@pytest.mark.slow
def test_matches_official_rwkv_package(tmp_path: Path) -> None:
    """Our state_dict, loaded by the `rwkv` pip package (x070, CPU fp32), gives the same logits and
    states. It runs in a fresh process outside the repository, where `rwkv` is the pip package."""
    model = build_model({**TINY, "n_layer": 3})
    perturb_parameters(model, std=0.1)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    idx = random_tokens(TINY["vocab_size"], B=1, T=23)[0]
    torch.save(idx, tmp_path / "idx.pt")
    (tmp_path / "official.py").write_text(OFFICIAL)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [sys.executable, "official.py", "model", "idx.pt", "out.pt"]
    run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = torch.load(tmp_path / "out.pt")
    model.eval()
    with torch.no_grad():
        logits, state = model(idx[None])
    assert_close(logits[0], ref["logits"], 1e-5, "logits vs rwkv package")
    for i, (att_shift, wkv, ffn_shift) in enumerate(state):
        assert_close(att_shift[0], ref["state"][3 * i], 1e-5, f"block {i} att shift")
        assert_close(wkv[0].transpose(-1, -2), ref["state"][3 * i + 1], 1e-5, f"block {i} wkv state")
        assert_close(ffn_shift[0], ref["state"][3 * i + 2], 1e-5, f"block {i} ffn shift")
