"""The fla export writes exactly the tensors (names and shapes) that fla 0.6.0's RWKV7ForCausalLM
and GatedDeltaProductForCausalLM declare, with the values moved as fla's conversion script moves
them. (Loading into fla itself needs its Triton kernels: tests/gpu/test_fla_export.py.)"""

from __future__ import annotations

import pytest
import torch

from skein.rwkv.convert import to_fla
from tests.export.helpers import tiny_model


def fla_rwkv7_layout(V: int, C: int, H: int, N: int, F: int, L: int, R: dict[str, int]) -> dict[str, tuple]:
    """Parameters of fla's RWKV7ForCausalLM, written out from fla/models/rwkv7 and fla/layers/rwkv7.py."""
    shapes: dict[str, tuple] = {"model.embeddings.weight": (V, C), "lm_head.weight": (V, C)}
    shapes.update({"model.norm.weight": (C,), "model.norm.bias": (C,)})
    for i in range(L):
        p = f"model.layers.{i}."
        norms = ["attn_norm", "ffn_norm"] + (["pre_norm"] if i == 0 else [])
        shapes.update({f"{p}{n}.{w}": (C,) for n in norms for w in ("weight", "bias")})
        shapes.update({f"{p}attn.x_{z}": (1, 1, C) for z in "rwkvag"})
        shapes.update({f"{p}attn.k_k": (C,), f"{p}attn.k_a": (C,), f"{p}attn.r_k": (H, N)})
        shapes.update({f"{p}attn.{m}_proj.weight": (C, C) for m in "rkvo"})
        for lora in "wavg" if i else "wag":
            shapes[f"{p}attn.{lora}_lora.lora.0.weight"] = (R[lora], C)
            shapes[f"{p}attn.{lora}_lora.lora.2.weight"] = (C, R[lora])
            if lora != "g":
                shapes[f"{p}attn.{lora}_lora.lora.2.bias"] = (C,)
        shapes.update({f"{p}attn.g_norm.weight": (C,), f"{p}attn.g_norm.bias": (C,)})
        shapes.update({f"{p}ffn.x_k": (C,), f"{p}ffn.key.weight": (F, C), f"{p}ffn.value.weight": (C, F)})
    return shapes


def fla_deltaproduct_layout(
    V: int, C: int, H: int, K: int, Vd: int, n: int, F: int, L: int, conv: int
) -> dict[str, tuple]:
    """Parameters of fla's GatedDeltaProductForCausalLM (gate, short conv and output gate on)."""
    shapes: dict[str, tuple] = {
        "model.embeddings.weight": (V, C),
        "lm_head.weight": (V, C),
        "model.norm.weight": (C,),
    }
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({f"{p}attn_norm.weight": (C,), f"{p}mlp_norm.weight": (C,)})
        shapes.update(
            {
                f"{p}attn.q_proj.weight": (H * K, C),
                f"{p}attn.k_proj.weight": (n * H * K, C),
                f"{p}attn.v_proj.weight": (n * H * Vd, C),
                f"{p}attn.b_proj.weight": (n * H, C),
                f"{p}attn.a_proj.weight": (H, C),
                f"{p}attn.A_log": (H,),
                f"{p}attn.dt_bias": (H,),
                f"{p}attn.q_conv1d.weight": (H * K, 1, conv),
                f"{p}attn.k_conv1d.weight": (n * H * K, 1, conv),
                f"{p}attn.v_conv1d.weight": (n * H * Vd, 1, conv),
                f"{p}attn.g_proj.weight": (H * Vd, C),
                f"{p}attn.o_norm.weight": (Vd,),
                f"{p}attn.o_proj.weight": (C, H * Vd),
                f"{p}mlp.gate_proj.weight": (F, C),
                f"{p}mlp.up_proj.weight": (F, C),
                f"{p}mlp.down_proj.weight": (C, F),
            }
        )
    return shapes


def test_rwkv7_layout_and_values() -> None:
    model = tiny_model("rwkv7", head_size=16, ln_x_eps=16e-5, decay_lora=32, iclr_lora=64, value_lora=96)
    config, sd = to_fla(model)
    cfg = model.config
    R = {"w": 32, "a": 64, "v": 96, "g": cfg.gate_lora}
    want = fla_rwkv7_layout(cfg.vocab_size, 64, 4, 16, cfg.d_ffn, cfg.n_layer, R)
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    own = model.state_dict()
    assert torch.equal(sd["model.layers.1.attn.w_lora.lora.0.weight"], own["blocks.1.att.w1"].t())
    assert torch.equal(sd["model.layers.1.attn.w_lora.lora.2.weight"], own["blocks.1.att.w2"].t())
    assert torch.equal(sd["model.layers.1.attn.w_lora.lora.2.bias"], own["blocks.1.att.w0"].flatten())
    assert torch.equal(sd["model.layers.2.attn.v_lora.lora.2.bias"], own["blocks.2.att.v0"].flatten())
    assert torch.equal(sd["model.layers.0.attn.g_norm.weight"], own["blocks.0.att.ln_x.weight"])
    assert torch.equal(sd["model.layers.0.attn.k_proj.weight"], own["blocks.0.att.key.weight"])
    assert torch.equal(sd["model.layers.0.pre_norm.bias"], own["blocks.0.ln0.bias"])
    assert config["num_heads"] == 4 and config["head_dim"] == 16 and config["norm_eps"] == cfg.norm_eps
    assert (config["decay_low_rank_dim"], config["a_low_rank_dim"], config["v_low_rank_dim"]) == (32, 64, 96)
    assert config["intermediate_size"] == cfg.d_ffn and config["value_dim"] == [64] * 3


def test_deltaproduct_layout_and_values() -> None:
    model = tiny_model("deltaproduct", n_householder=3, d_ffn=128)
    config, sd = to_fla(model)
    cfg = model.config
    want = fla_deltaproduct_layout(cfg.vocab_size, 64, 2, 32, 64, 3, 128, 2, 4)
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    own = model.state_dict()
    gate, up = own["blocks.1.ffn.gate_up.weight"].chunk(2)
    assert torch.equal(sd["model.layers.1.mlp.gate_proj.weight"], gate)
    assert torch.equal(sd["model.layers.1.mlp.up_proj.weight"], up)
    assert torch.equal(sd["model.layers.0.attn.k_conv1d.weight"], own["blocks.0.mixer.k_conv.weight"])
    assert torch.equal(sd["model.layers.0.attn.o_norm.weight"], own["blocks.0.mixer.o_norm"])
    assert (config["num_heads"], config["head_dim"], config["expand_v"]) == (2, 32, 2.0)
    assert (config["num_householder"], config["use_forget_gate"], config["allow_neg_eigval"]) == (
        3,
        True,
        True,
    )


@pytest.mark.parametrize(
    ("arch", "fields", "message"),
    [
        ("rwkv7", {"head_size": 32}, "model.ln_x_eps=0.00064.*head_size \\* norm_eps"),
        ("deltaproduct", {"qk_norm_eps": 1e-5}, "model.qk_norm_eps"),
        ("rwkv4", {}, "use format 'hf' or 'rwkv_lm'"),
        ("llama", {}, "not model.arch=llama"),
    ],
)
def test_fla_export_refuses_what_fla_cannot_reproduce(arch: str, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_fla(tiny_model(arch, **fields))
