"""RWKV-7 ("Goose", x070): generalized-delta-rule time mixing with a value residual, and a
squared-ReLU channel mix.

Parameter names and shapes are RWKV-LM's x070 training layout, so `state_dict()` is an RWKV-LM x070
checkpoint: emb, blocks.{i}.{ln1, ln2, att.*, ffn.*} (+ blocks.0.ln0), ln_out, head; att.v0/v1/v2
exist on blocks 1.. only (block 0 produces the value residual instead of consuming it). Per block,
with x' = ln1(x), x'_{t-1} the previous token's x' and mix_z = x' + (x'_{t-1} - x') * x_z:

    r = W_r mix_r,  k = W_k mix_k,  v = W_v mix_v
    w = -softplus(-(w0 + tanh(mix_w w1) w2)) - 0.5         log decay of the WKV: -exp(w)
    a = sigmoid(a0 + mix_a a1 a2)                           in-context learning rate
    g = sigmoid(mix_g g1) g2                                output gate
    v = v + (v_first - v) * sigmoid(v0 + mix_v v1 v2)      blocks >= 1; block 0 sets v_first = v
    kk = normalize(k * k_k) per head;  k = k * (1 + (a - 1) * k_a)
    o = WKV7(r, -exp(w), k, v, a=-kk, b=kk*a)               S_t = S diag(e^w) + b (a^T S) + k v^T
    x += W_o ((GroupNorm_heads(o) + ((r * k * r_k).sum per head) v) * g)
    x += W_v' relu(W_k' (x'' + (x''_{t-1} - x'') * ffn.x_k))^2      x'' = ln2(x)

and block 0 first applies ln0 to the embedding. The state of block i is
(att token-shift x' [B, C], WKV state [B, H, K, V] float32, ffn token-shift x'' [B, C]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skein.rwkv.models.common import MATMUL_OPS, CausalLM, ModelConfig, State, token_shift
from skein.rwkv.ops.rwkv7 import DOTS, rwkv7

BlockState = tuple[Tensor, Tensor, Tensor]

WKV_STEP_FLOPS = 9
"""Forward FLOPs of one WKV step per state element (naive.rwkv7_naive): a^T S, b u^T, k v^T and
S^T r are one multiply-add each, the decay one multiply."""


def lora_rank(d_model: int, factor: float, power: float) -> int:
    """RWKV-LM's suggested LoRA width: max(32, round(factor * d_model^power / 32) * 32)."""
    return max(32, int(round(factor * d_model**power / 32) * 32))


@dataclass(kw_only=True)
class RWKV7Config(ModelConfig):
    arch: str = "rwkv7"
    recurrent = True
    head_size: int = 64
    """Channels per head (K = V); d_model / head_size heads."""
    d_ffn: int | None = None
    """Channel-mix hidden width; None means 4 d_model."""
    decay_lora: int | None = None
    """Width of the decay LoRA (w1, w2); None means max(32, round(1.8 sqrt(d_model) / 32) * 32)."""
    iclr_lora: int | None = None
    """Width of the in-context learning-rate LoRA (a1, a2); None means as decay_lora."""
    value_lora: int | None = None
    """Width of the value-residual LoRA (v1, v2); None means max(32, round(1.3 sqrt(d_model) / 32) * 32)."""
    gate_lora: int | None = None
    """Width of the output-gate LoRA (g1, g2); None means max(32, round(0.6 d_model^0.8 / 32) * 32)."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon of ln0, ln1, ln2 and ln_out."""
    ln_x_eps: float = 64e-5
    """Epsilon of the per-head GroupNorm ln_x (RWKV-LM: 1e-5 * head_size_divisor^2, divisor 8)."""
    emb_init_scale: float = 1e-4
    """Embedding initialised uniform in (-emb_init_scale, emb_init_scale)."""
    head_init_gain: float = 0.5
    """head.weight is orthogonal with gain head_init_gain * sqrt(vocab_size / d_model) (the
    square-root factor only when vocab_size > d_model)."""
    lr_scale_w0: float = 2.0
    """Learning-rate multiplier of att.w0 (RWKV-LM's x070 optimizer groups)."""
    kernel_dots: Literal["auto", "bf16"] = "auto"
    """Operands of the GPU kernel's tile products: auto (TF32 for bf16 inputs) or bf16 (rounded
    to bf16 with fp32 accumulation: about 1.5x faster forward + backward and about twice the
    error against float64, docs/kernels.md). The CPU forms ignore it."""

    def state_size(self, seq_len: int) -> int:
        """One K x V matrix per head."""
        return self.n_head * self.head_size * self.head_size

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_size <= 0 or self.d_model % self.head_size:
            raise ValueError(
                f"model.head_size={self.head_size} must be positive and divide model.d_model={self.d_model}"
            )
        if self.d_ffn is None:
            self.d_ffn = 4 * self.d_model
        defaults = {
            "decay_lora": lora_rank(self.d_model, 1.8, 0.5),
            "iclr_lora": lora_rank(self.d_model, 1.8, 0.5),
            "value_lora": lora_rank(self.d_model, 1.3, 0.5),
            "gate_lora": lora_rank(self.d_model, 0.6, 0.8),
        }
        for name, default in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        for name in ("d_ffn", *defaults):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name in ("norm_eps", "ln_x_eps", "lr_scale_w0"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name in ("emb_init_scale", "head_init_gain"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if self.kernel_dots not in DOTS:
            raise ValueError(f"model.kernel_dots={self.kernel_dots!r} must be one of {', '.join(DOTS)}")

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_size


def _vec(C: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(1, 1, C))


class TimeMix(nn.Module):
    """The RWKV-7 sequence mixer. forward(x' [B, T, C], v_first [B, T, C] (ignored on block 0),
    shift [B, C] | None, wkv [B, H, K, V] | None) -> (out [B, T, C], v_first, last x' [B, C], wkv)."""

    def __init__(self, cfg: RWKV7Config, layer_id: int) -> None:
        super().__init__()
        C = cfg.d_model
        self.layer_id = layer_id
        # What the forward branches on: a bool, so compiled blocks share two graphs (first, rest)
        # instead of one per layer_id (Dynamo specialises on integer module attributes).
        self.first = layer_id == 0
        self.n_head, self.head_size = cfg.n_head, cfg.head_size
        self.kernel, self.kernel_dots = cfg.kernel, cfg.kernel_dots
        # Registration order follows RWKV-LM, so state_dict() lists the tensors in its order.
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (_vec(C) for _ in range(6))
        self.w1 = nn.Parameter(torch.empty(C, cfg.decay_lora))
        self.w2 = nn.Parameter(torch.empty(cfg.decay_lora, C))
        self.w0 = _vec(C)
        self.a1 = nn.Parameter(torch.empty(C, cfg.iclr_lora))
        self.a2 = nn.Parameter(torch.empty(cfg.iclr_lora, C))
        self.a0 = _vec(C)
        if layer_id > 0:
            self.v1 = nn.Parameter(torch.empty(C, cfg.value_lora))
            self.v2 = nn.Parameter(torch.empty(cfg.value_lora, C))
            self.v0 = _vec(C)
        self.g1 = nn.Parameter(torch.empty(C, cfg.gate_lora))
        self.g2 = nn.Parameter(torch.empty(cfg.gate_lora, C))
        self.k_k = _vec(C)
        self.k_a = _vec(C)
        self.r_k = nn.Parameter(torch.empty(cfg.n_head, cfg.head_size))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(cfg.n_head, C, eps=cfg.ln_x_eps)

    def forward(
        self, x: Tensor, v_first: Tensor, shift: Tensor | None, wkv: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        prev, last = token_shift(x, shift)
        # the six token-shift interpolations as one broadcast op on the stacked mixing vectors
        # ([6, 1, 1, C] against [B, T, C]); the parameters stay six tensors (RWKV-LM's layout)
        mix = torch.stack([self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g])
        xr, xw, xk, xv, xa, xg = (x + (prev - x) * mix).unbind(0)

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        if self.first:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        # log decay -exp(-softplus(-z) - 0.5) = -exp(-0.5) sigmoid(z), z = w0 + tanh(mix_w w1) w2
        log_w = -math.exp(-0.5) * torch.sigmoid(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, H, N)

        kk = F.normalize(heads(k * self.k_k), dim=-1)
        k = k * (1 + (a - 1) * self.k_a)
        # The op takes one dtype for its sequence inputs: the projections' (bf16 under autocast). It
        # computes in float32 and keeps the state in float32.
        dt = r.dtype
        o, wkv = rwkv7(
            heads(r),
            heads(log_w).to(dt),
            heads(k).to(dt),
            heads(v).to(dt),
            (-kk).to(dt),
            (kk * heads(a)).to(dt),
            wkv,
            backend=self.kernel,
            dots=self.kernel_dots,
        )
        o = self.ln_x(o.reshape(B * T, C)).view(B, T, C)
        bonus = ((heads(r) * heads(k) * self.r_k).sum(-1, keepdim=True) * heads(v)).view(B, T, C)
        return self.output((o + bonus) * g), v_first, last, wkv


class ChannelMix(nn.Module):
    """Squared-ReLU feed-forward. forward(x'' [B, T, C], shift [B, C] | None) -> (out, last x'')."""

    def __init__(self, cfg: RWKV7Config) -> None:
        super().__init__()
        self.x_k = _vec(cfg.d_model)
        self.key = nn.Linear(cfg.d_model, cfg.d_ffn, bias=False)
        self.value = nn.Linear(cfg.d_ffn, cfg.d_model, bias=False)

    def forward(self, x: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor]:
        prev, last = token_shift(x, shift)
        k = torch.square(F.relu(self.key(x + (prev - x) * self.x_k)))
        return self.value(k), last


class Block(nn.Module):
    """forward(x [B, T, C], v_first [B, T, C], state | None) -> (x, v_first, (att shift, wkv, ffn shift)).

    Block 0 ignores the v_first it is given and returns its own values as v_first."""

    def __init__(self, cfg: RWKV7Config, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ln0 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if layer_id == 0 else None
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg)

    def forward(
        self, x: Tensor, v_first: Tensor, state: BlockState | None
    ) -> tuple[Tensor, Tensor, BlockState]:
        att_shift, wkv, ffn_shift = (None, None, None) if state is None else state
        if self.ln0 is not None:
            x = self.ln0(x)
        h, v_first, att_shift, wkv = self.att(self.ln1(x), v_first, att_shift, wkv)
        x = x + h
        h, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + h, v_first, (att_shift, wkv, ffn_shift)


class RWKV7(CausalLM):
    """RWKV-7 language model; state = per-block (att shift, WKV state, ffn shift)."""

    formats = ("rwkv_lm", "fla", "safetensors")
    saved_ops = MATMUL_OPS | {"skein::rwkv7_fwd"}

    def sequence_mixers(self) -> list[nn.Module]:
        return [block.att for block in self.blocks]

    def embedding_norm(self) -> nn.Module | None:
        return self.blocks[0].ln0

    @staticmethod
    def run_mixer(mixer: nn.Module, x: Tensor, carry: Any) -> tuple[Tensor, Any]:
        """`carry` is the first layer's values (v_first), which every later layer mixes in."""
        y, v_first, _, _ = mixer(x, x.new_empty(0) if carry is None else carry, None, None)
        return y, v_first

    config: RWKV7Config

    def __init__(self, config: RWKV7Config) -> None:
        super().__init__(config, (Block(config, i) for i in range(config.n_layer)), nn.LayerNorm)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """RWKV-LM's x070 scheme (its module init followed by generate_init_weight). With
        r0 = i / (n_layer - 1) (0 to 1; 0 for one layer) and r1 = 1 - i / n_layer (1 to almost 0)
        for layer i, and channel c of C, f = c / C:

        x_r = x_g = 1 - f^(0.2 r1), x_w = x_a = 1 - f^(0.9 r1), x_k = 1 - f^(0.9 r1) - 0.4 r0,
        x_v = 1 - f^(0.4 r1) - 0.6 r0, ffn.x_k = 1 - f^(r1^4);
        w0 = -6.5 + 5 (c / (C - 1))^(0.85 + r0^0.5); a0 = 0; v0 = 1; k_k = 0.85; k_a = 1; r_k = 0;
        w1, a1, v1, g1 zero; w2, a2, v2, g2 orthogonal with gain 0.1 (times sqrt(rows / cols) when
        rows > cols); ln_x weight ((i + 1) / n_layer)^0.7, bias 0. Matrices: receptance, value and
        ffn.key orthogonal (gain 1), key orthogonal (gain 0.1), output and ffn.value zero. Embedding
        uniform(+-emb_init_scale), head orthogonal (head_init_gain, see the config), LayerNorms 1 and 0.
        """
        cfg = self.config
        C, L = cfg.d_model, cfg.n_layer
        f = (torch.arange(C, dtype=torch.float64) / C).view(1, 1, C)
        ramp = (torch.arange(C, dtype=torch.float64) / max(C - 1, 1)).view(1, 1, C)
        for i, block in enumerate(self.blocks):
            r0 = i / (L - 1) if L > 1 else 0.0
            r1 = 1.0 - i / L
            att, ffn = block.att, block.ffn
            att.x_r.copy_(1 - f.pow(0.2 * r1))
            att.x_w.copy_(1 - f.pow(0.9 * r1))
            att.x_k.copy_(1 - (f.pow(0.9 * r1) + 0.4 * r0))
            att.x_v.copy_(1 - (f.pow(0.4 * r1) + 0.6 * r0))
            att.x_a.copy_(1 - f.pow(0.9 * r1))
            att.x_g.copy_(1 - f.pow(0.2 * r1))
            att.w0.copy_(-7 + 5 * ramp.pow(0.85 + r0**0.5) + 0.5)
            att.a0.zero_()
            att.k_k.fill_(0.85)
            att.k_a.fill_(1.0)
            att.r_k.zero_()
            loras = [(att.w1, att.w2), (att.a1, att.a2), (att.g1, att.g2)]
            if i > 0:
                att.v0.fill_(1.0)
                loras.append((att.v1, att.v2))
            for down, up in loras:
                down.zero_()
                nn.init.orthogonal_(up, gain=0.1 * _shape_gain(up))
            att.ln_x.weight.fill_(((i + 1) / L) ** 0.7)
            att.ln_x.bias.zero_()
            for lin, gain in ((att.receptance, 1.0), (att.key, 0.1), (att.value, 1.0), (ffn.key, 1.0)):
                nn.init.orthogonal_(lin.weight, gain=gain)
            att.output.weight.zero_()
            ffn.value.weight.zero_()
            ffn.x_k.copy_(1 - f.pow(r1**4))
            for ln in (block.ln0, block.ln1, block.ln2):
                if ln is not None:
                    ln.reset_parameters()
        self.ln_out.reset_parameters()
        nn.init.uniform_(self.emb.weight, -cfg.emb_init_scale, cfg.emb_init_scale)
        gain = cfg.head_init_gain * (math.sqrt(cfg.vocab_size / C) if cfg.vocab_size > C else 1.0)
        nn.init.orthogonal_(self.head.weight, gain=gain)

    def hidden(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        state = state if state is not None else [None] * len(self.blocks)
        x = self.emb(idx)
        v_first = x.new_empty(0)  # replaced by block 0's values
        new_state = []
        for block, s in zip(self.blocks, state):
            x, v_first, s = block(x, v_first, s)
            new_state.append(s)
        return self.ln_out(x), new_state

    def lr_multipliers(self) -> dict[str, float]:
        """att.w0 trains at lr_scale_w0 times the base rate (RWKV-LM x070's 2x group)."""
        return {
            name: self.config.lr_scale_w0 for name, _ in self.named_parameters() if name.endswith("att.w0")
        }

    def flops_per_token(self, ctx_len: int) -> float:
        """6 (N - vocab_size d_model) for the weights, plus the WKV recurrence: WKV_STEP_FLOPS per
        state element, H K V = d_model head_size elements per layer, times 3 for forward + backward:

            6 (N - W C) + 3 * 9 * n_layer * d_model * head_size

        independent of ctx_len (the chunked form's extra intra-chunk work is not counted)."""
        cfg = self.config
        return (
            super().flops_per_token(ctx_len)
            + 3.0 * WKV_STEP_FLOPS * cfg.n_layer * cfg.d_model * cfg.head_size
        )


def _shape_gain(weight: Tensor) -> float:
    rows, cols = weight.shape
    return math.sqrt(rows / cols) if rows > cols else 1.0
