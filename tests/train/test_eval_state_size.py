"""State size per layer, per architecture: the formula against the state the model really carries."""

from __future__ import annotations

import pytest
import torch

from skein.rwkv import build_model
from skein.train.eval.models import MixerLM, mixer_spec
from skein.train.eval.state_size import state_size

B, T = 2, 12


def _run(cfg: dict) -> tuple:
    model = build_model({"vocab_size": 97, "n_layer": 2, **cfg})
    _, state = model(torch.randint(0, 97, (B, T)))
    return model.config, state[0]


def test_rwkv7_is_heads_times_head_size_squared() -> None:
    cfg, (_, wkv, _) = _run({"arch": "rwkv7", "d_model": 128, "head_size": 32})
    assert wkv.shape == (B, 4, 32, 32)
    assert state_size(cfg, T) == wkv[0].numel() == 4 * 32 * 32 == 128 * 32


def test_deltaproduct_is_heads_times_k_times_v() -> None:
    cfg, block = _run(
        {"arch": "deltaproduct", "d_model": 64, "n_head": 4, "expand_v": 2.0, "n_householder": 2}
    )
    S = block[-1]
    assert S.shape == (B, 4, 16, 32)
    assert state_size(cfg, T) == S[0].numel() == 4 * 16 * 32


def test_rwkv4_counts_its_three_vectors_per_channel() -> None:
    cfg, (_, aa, bb, pp, _) = _run({"arch": "rwkv4", "d_model": 48})
    assert state_size(cfg, T) == aa[0].numel() + bb[0].numel() + pp[0].numel() == 3 * 48


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_attention_is_the_kv_cache(n_kv_head: int) -> None:
    cfg, (k, v) = _run({"arch": "llama", "d_model": 64, "n_head": 4, "n_kv_head": n_kv_head})
    assert state_size(cfg, T) == k[0].numel() + v[0].numel() == 2 * T * n_kv_head * 16
    if n_kv_head == 4:
        assert state_size(cfg, T) == 2 * T * 64


@pytest.mark.parametrize("d_model,expected", [(128, 8192), (256, 16384)])
def test_mqar_mixers_reach_8k_and_16k(d_model: int, expected: int) -> None:
    """RWKV-7 and DeltaNet with 64-wide heads: d_model 128 is an 8k state per layer, 256 a 16k one."""
    for name in ("rwkv7", "rwkv7_conv4", "deltanet"):
        model = MixerLM(mixer_spec(name, d_model), 64, 2, d_model)
        assert state_size(model.config, 512) == expected, name


def test_shared_short_conv_for_any_mixer() -> None:
    """`<mixer>_conv4` adds the same depthwise convolution before the mixer, leaving the state alone."""
    plain, conv = (MixerLM(mixer_spec(n, 64), 64, 2, 64) for n in ("attention", "attention_conv4"))
    assert plain.convs is None and [c.weight.shape for c in conv.convs] == [(64, 1, 4)] * 2
    extra = sum(p.numel() for p in conv.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * 64 * 4
    x = torch.randint(0, 64, (2, 10))
    y = conv(x)
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 64
    assert torch.allclose(conv(x2)[:, :6], y[:, :6], atol=1e-5)  # still causal
    with pytest.raises(ValueError, match="unknown mixer 'mamba'"):
        mixer_spec("mamba", 64)
