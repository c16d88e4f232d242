"""DeltaProduct model: its state layout and variants, bf16 autocast, config validation, gate init,
and the parameter count of docs/models/deltaproduct.md (the generic checks: test_every_arch.py)."""

from __future__ import annotations

import pytest
import torch
import yaml

from skein.rwkv import build_model
from skein.rwkv.models import detach_state, model_config_from_dict
from skein.rwkv.models.deltaproduct import DeltaProductConfig
from tests.models.harness import (
    DELTAPRODUCT_BASE,
    TINY,
    check_segmented_and_stepwise,
    perturb_parameters,
    random_tokens,
)
from tests.utils import assert_close

DELTANET, GATED_DP = TINY["deltanet"], TINY["gated_deltaproduct2"]


def test_state_is_detached_between_segments() -> None:
    model = build_model(GATED_DP)
    idx = random_tokens(GATED_DP["vocab_size"], T=12)
    _, state = model(idx[:, :6])
    conv_q, conv_k, conv_v, S = state[0]
    assert S.shape == (2, 2, 32, 48) and S.dtype == torch.float32
    assert conv_k.shape == (2, 2 * 2 * 32, 3)
    assert all(t.grad_fn is None for s in detach_state(state) for t in s)


def test_without_short_conv_and_output_gate() -> None:
    cfg = {**GATED_DP, "use_short_conv": False, "use_output_gate": False}
    model = build_model(cfg)
    perturb_parameters(model)
    check_segmented_and_stepwise(model)
    _, state = model(random_tokens(cfg["vocab_size"], T=4))
    assert len(state[0]) == 1


def test_runs_under_bf16_autocast() -> None:
    model = build_model(GATED_DP)
    perturb_parameters(model)
    idx = random_tokens(GATED_DP["vocab_size"])
    ref, _ = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(idx)
        logits.float().pow(2).mean().backward()
    assert state[0][-1].dtype == torch.float32
    assert_close(logits.float(), ref, 5e-2, "bf16 logits")
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def expected_num_params(c: DeltaProductConfig) -> int:
    """The closed form of docs/models/deltaproduct.md."""
    d, L, W, H, n = c.d_model, c.n_layer, c.vocab_size, c.n_head, c.n_householder
    K, V, F = c.head_k_dim, c.head_v_dim, c.d_ffn
    mixer = d * H * K * (1 + n) + d * H * V * (n + 1) + d * n * H + V
    mixer += (d * H + 2 * H) * c.use_gate + d * H * V * c.use_output_gate
    mixer += c.conv_size * H * (K + n * K + n * V) * c.use_short_conv
    return 2 * W * d + d + L * (mixer + 3 * d * F + 2 * d)


@pytest.mark.parametrize(
    "cfg",
    [
        DELTANET,
        GATED_DP,
        {**GATED_DP, "n_householder": 3, "use_short_conv": False, "use_output_gate": False, "d_ffn": 96},
        {**DELTAPRODUCT_BASE, "head_v_dim": 24, "conv_size": 3, "use_gate": False},
    ],
)
def test_num_params_formula(cfg: dict) -> None:
    model = build_model(cfg)
    assert model.num_params() == expected_num_params(model.config)


def test_flops_per_token() -> None:
    model = build_model(GATED_DP)
    c = model.config
    six_n = 6 * (model.num_params() - c.vocab_size * c.d_model)
    mix = 3 * c.n_layer * c.n_head * (4 * 2 + 2) * c.head_k_dim * c.head_v_dim
    assert model.flops_per_token(512) == six_n + mix


def test_gate_init_ranges() -> None:
    model = build_model({**GATED_DP, "n_head": 64, "head_k_dim": 4})
    mixer = model.blocks[0].mixer
    A = mixer.A_log.exp()
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert (A >= 0).all() and (A <= 16).all() and A.std() > 1
    assert (dt >= 0.001 - 1e-6).all() and (dt <= 0.1 + 1e-6).all()


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("n_head", 3, "n_head"),
        ("expand_v", 0.3, "expand_v"),
        ("n_householder", 0, "n_householder"),
        ("conv_size", 1, "conv_size"),
        ("dt_min", 0.5, "dt_min"),
        ("a_init_range", (4.0, 1.0), "a_init_range"),
        ("a_init_range", [1.0], r"a_init_range must be \[low, high\]"),
    ],
)
def test_config_validation(key: str, value, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model({**GATED_DP, key: value})


def test_config_survives_a_yaml_round_trip() -> None:
    cfg = model_config_from_dict({**GATED_DP, "a_init_range": [1, 8]})
    assert cfg.a_init_range == (1.0, 8.0)
    assert model_config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
