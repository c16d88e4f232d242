"""RWKV-4: RWKV-LM's parameter layout, the documented parameter count, the initialisation scheme,
the state layout and bf16 autocast (the generic checks: test_every_arch.py)."""

from __future__ import annotations

import math

import pytest
import torch

from skein.rwkv import build_model
from skein.rwkv.models.rwkv4 import WKV_STEP_FLOPS, RWKV4Config
from tests.models.harness import TINY as TINY_CONFIGS
from tests.models.harness import (
    perturb_parameters,
    random_tokens,
)
from tests.utils import assert_close

TINY = TINY_CONFIGS["rwkv4"]


def rwkv_lm_layout(V: int, C: int, F: int, L: int) -> dict[str, tuple[int, ...]]:
    """The tensors of an RWKV-LM RWKV-4 (v4neo) checkpoint, written out from its model.py."""
    shapes = {"emb.weight": (V, C)}
    for i in range(L):
        b = f"blocks.{i}."
        lns = ["ln1", "ln2"] + (["ln0"] if i == 0 else [])
        shapes.update({f"{b}{ln}.{p}": (C,) for ln in lns for p in ("weight", "bias")})
        shapes.update({f"{b}att.time_decay": (C,), f"{b}att.time_first": (C,)})
        shapes.update({f"{b}att.time_mix_{z}": (1, 1, C) for z in "kvr"})
        shapes.update({f"{b}att.{m}.weight": (C, C) for m in ("key", "value", "receptance", "output")})
        shapes.update({f"{b}ffn.time_mix_{z}": (1, 1, C) for z in "kr"})
        shapes.update(
            {
                f"{b}ffn.key.weight": (F, C),
                f"{b}ffn.receptance.weight": (C, C),
                f"{b}ffn.value.weight": (C, F),
            }
        )
    shapes.update({"ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)})
    return shapes


def params_formula(V: int, C: int, F: int, L: int) -> int:
    """docs/models/rwkv4.md: N = 2 V C + 4 C + L (5 C^2 + 2 C F + 11 C)."""
    return 2 * V * C + 4 * C + L * (5 * C * C + 2 * C * F + 11 * C)


@pytest.mark.parametrize("overrides", [{}, {"d_ffn": 96, "n_layer": 3, "d_model": 32}])
def test_state_dict_is_rwkv_lm_layout(overrides: dict) -> None:
    model = build_model({**TINY, **overrides})
    cfg = model.config
    got = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert got == rwkv_lm_layout(cfg.vocab_size, cfg.d_model, cfg.d_ffn, cfg.n_layer)


@pytest.mark.parametrize("overrides", [{}, {"d_ffn": 96, "n_layer": 3, "d_model": 32}, {"n_layer": 1}])
def test_num_params_matches_formula(overrides: dict) -> None:
    model = build_model({**TINY, **overrides})
    cfg = model.config
    assert model.num_params() == params_formula(cfg.vocab_size, cfg.d_model, cfg.d_ffn, cfg.n_layer)
    assert cfg.d_ffn == overrides.get("d_ffn", 4 * cfg.d_model)


def test_flops_per_token() -> None:
    model = build_model(TINY)
    V, C, L = 97, 64, 2
    expected = 6.0 * (model.num_params() - V * C) + 3.0 * WKV_STEP_FLOPS * L * C
    assert model.flops_per_token(512) == expected


def test_initialisation_follows_rwkv_lm() -> None:
    model = build_model({**TINY, "n_layer": 3})
    C = 64
    b0, b2 = model.blocks[0], model.blocks[2]
    # time_decay runs from -5 to 3 over the channels, with a layer-dependent curve.
    for b in (b0, b2):
        assert b.att.time_decay[0].item() == pytest.approx(-5.0)
        assert b.att.time_decay[-1].item() == pytest.approx(3.0)
    mid = C // 2
    assert b0.att.time_decay[mid].item() == pytest.approx(-5 + 8 * (mid / (C - 1)) ** 0.7, rel=1e-6)
    assert b2.att.time_decay[mid].item() == pytest.approx(-5 + 8 * (mid / (C - 1)) ** 2.0, rel=1e-6)
    zigzag = torch.tensor([0.0, 0.5, -0.5]).repeat(C // 3 + 1)[:C]
    assert_close(b0.att.time_first, math.log(0.3) + zigzag, 1e-6, "time_first")
    frac = torch.arange(C) / C
    assert_close(b0.att.time_mix_k.flatten(), frac, 1e-6, "layer-0 time_mix_k")
    assert_close(b2.att.time_mix_v.flatten(), frac ** (1 / 3) + 0.3, 1e-6, "last-layer time_mix_v")
    assert_close(b2.att.time_mix_r.flatten(), frac ** (1 / 6), 1e-6, "last-layer time_mix_r")
    for lin in (b0.att.key, b0.att.receptance, b0.att.output, b0.ffn.receptance, b0.ffn.value):
        assert torch.count_nonzero(lin.weight) == 0
    W = b0.att.value.weight
    assert_close(W @ W.T, torch.eye(C), 1e-5, "att.value orthogonal")
    K = b0.ffn.key.weight  # [4C, C], gain 2: columns orthogonal with norm 2
    assert_close(K.T @ K, 4 * torch.eye(C), 1e-5, "ffn.key orthogonal, gain 2")
    H = model.head.weight  # [97, 64], gain 0.5 sqrt(97 / 64)
    assert_close(H.T @ H, 0.25 * 97 / 64 * torch.eye(C), 1e-5, "head orthogonal")
    assert model.emb.weight.abs().max() <= 1e-4


def test_lr_multipliers() -> None:
    model = build_model({**TINY, "lr_scale_time_first": 4.0})
    expected = {}
    for i in range(2):
        expected[f"blocks.{i}.att.time_decay"] = 2.0
        expected[f"blocks.{i}.att.time_first"] = 4.0
    assert model.lr_multipliers() == expected


def test_state_layout() -> None:
    model = build_model(TINY)
    _, state = model(random_tokens(97, T=5))
    assert len(state) == 2
    for block_state in state:
        assert len(block_state) == 5
        assert all(t.shape == (2, 64) for t in block_state)
        assert all(t.dtype == torch.float32 for t in block_state[1:4])


def test_runs_under_bf16_autocast() -> None:
    model = build_model(TINY)
    perturb_parameters(model)
    idx = random_tokens(97)
    ref, _ = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(idx)
        logits.float().pow(2).mean().backward()
    assert all(t.dtype == torch.float32 for s in state for t in s[1:4])
    assert_close(logits.float(), ref, 5e-2, "bf16 logits")
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "key,value", [("d_ffn", 0), ("norm_eps", 0.0), ("emb_init_scale", -1.0), ("lr_scale_time_decay", 0.0)]
)
def test_config_validation(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        RWKV4Config(**{**TINY, key: value})
