"""RWKV-4: token-shift time mixing with the WKV recurrence, and a squared-ReLU channel mix.

Parameter names and shapes are RWKV-LM's RWKV-4 (RWKV-v4neo) training layout, so `state_dict()` is
an RWKV-LM RWKV-4 checkpoint: emb, blocks.{i}.{ln1, ln2, att.*, ffn.*} (+ blocks.0.ln0), ln_out,
head. Per block, with x' = LayerNorm(x) and x'_{t-1} the previous token's x' (token shift):

    mix_z(a) = a * time_mix_z + a_{t-1} * (1 - time_mix_z)
    time mix:    k = K mix_k(x'), v = V mix_v(x'), r = sigmoid(R mix_r(x'))
                 x += O (r * wkv(-exp(time_decay), time_first, k, v))
    channel mix: x += sigmoid(R' mix_r(x'')) * V' relu(K' mix_k(x''))^2

and block 0 first applies ln0 to the embedding. The state of block i is
(att token-shift x' [B, C], aa, bb, pp [B, C] float32 WKV sums, ffn token-shift x'' [B, C]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skein.rwkv.models.common import MATMUL_OPS, CausalLM, ModelConfig, token_shift
from skein.rwkv.ops.wkv4 import wkv4

BlockState = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]

WKV_STEP_FLOPS = 23
"""Elementwise operations of one forward WKV step per channel (output and state update of
naive.wkv4_naive, an exp counted as one)."""


@dataclass(kw_only=True)
class RWKV4Config(ModelConfig):
    arch: str = "rwkv4"
    recurrent = True
    d_ffn: int | None = None
    """Channel-mix hidden width; None means 4 d_model."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon of ln0, ln1, ln2 and ln_out."""
    emb_init_scale: float = 1e-4
    """Embedding initialised uniform in (-emb_init_scale, emb_init_scale); RWKV-LM v4neo uses
    its lr_init here."""
    head_init_gain: float = 0.5
    """head.weight is orthogonal with gain head_init_gain * sqrt(vocab_size / d_model) (the
    square-root factor only when vocab_size > d_model)."""
    lr_scale_time_decay: float = 2.0
    """Learning-rate multiplier of att.time_decay (RWKV-LM's layerwise_lr default)."""
    lr_scale_time_first: float = 3.0
    """Learning-rate multiplier of att.time_first (RWKV-LM's layerwise_lr default)."""

    def state_size(self, seq_len: int) -> int:
        """The WKV numerator, denominator and running maximum of every channel (a vector state)."""
        return 3 * self.d_model

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_ffn is None:
            self.d_ffn = 4 * self.d_model
        if self.d_ffn <= 0:
            raise ValueError(f"model.d_ffn must be positive, got {self.d_ffn}")
        if self.norm_eps <= 0:
            raise ValueError(f"model.norm_eps must be positive, got {self.norm_eps}")
        for name in ("emb_init_scale", "head_init_gain"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr_scale_time_decay", "lr_scale_time_first"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")


def _mix(x: Tensor, prev: Tensor, *mixes: Tensor) -> tuple[Tensor, ...]:
    """x * m + prev * (1 - m) for each mixing vector m [1, 1, C], as one broadcast op over the
    stacked vectors ([n, 1, 1, C] against [B, T, C]); the parameters stay separate tensors."""
    m = torch.stack(mixes)
    return (x * m + prev * (1 - m)).unbind(0)


class TimeMix(nn.Module):
    """The WKV sequence mixer. forward(x' [B, T, C], shift [B, C] | None, wkv_state | None)
    -> (out [B, T, C], last x' [B, C], (aa, bb, pp))."""

    def __init__(self, cfg: RWKV4Config) -> None:
        super().__init__()
        C = cfg.d_model
        self.cfg = cfg
        self.time_decay = nn.Parameter(torch.empty(C))
        self.time_first = nn.Parameter(torch.empty(C))
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def forward(
        self, x: Tensor, shift: Tensor | None, wkv_state: tuple[Tensor, Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
        prev, last = token_shift(x, shift)
        xk, xv, xr = _mix(x, prev, self.time_mix_k, self.time_mix_v, self.time_mix_r)
        k, v = self.key(xk), self.value(xv)
        r = torch.sigmoid(self.receptance(xr))
        w = -torch.exp(self.time_decay.float())
        y, wkv_state = wkv4(w, self.time_first.float(), k, v, wkv_state, backend=self.cfg.kernel)
        return self.output(r * y), last, wkv_state


class ChannelMix(nn.Module):
    """Squared-ReLU feed-forward gated by sigmoid receptance. forward(x'' [B, T, C],
    shift [B, C] | None) -> (out [B, T, C], last x'' [B, C])."""

    def __init__(self, cfg: RWKV4Config) -> None:
        super().__init__()
        C = cfg.d_model
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, cfg.d_ffn, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(cfg.d_ffn, C, bias=False)

    def forward(self, x: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor]:
        prev, last = token_shift(x, shift)
        xk, xr = _mix(x, prev, self.time_mix_k, self.time_mix_r)
        k = torch.square(F.relu(self.key(xk)))
        r = torch.sigmoid(self.receptance(xr))
        return r * self.value(k), last


class Block(nn.Module):
    """forward(x [B, T, C], state | None) -> (x, (att shift, aa, bb, pp, ffn shift))."""

    def __init__(self, cfg: RWKV4Config, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ln0 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if layer_id == 0 else None
        self.att = TimeMix(cfg)
        self.ffn = ChannelMix(cfg)

    def forward(self, x: Tensor, state: BlockState | None) -> tuple[Tensor, BlockState]:
        att_shift, wkv_state, ffn_shift = None, None, None
        if state is not None:
            att_shift, aa, bb, pp, ffn_shift = state
            wkv_state = (aa, bb, pp)
        if self.ln0 is not None:
            x = self.ln0(x)
        h, att_shift, (aa, bb, pp) = self.att(self.ln1(x), att_shift, wkv_state)
        x = x + h
        h, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + h, (att_shift, aa, bb, pp, ffn_shift)


class RWKV4(CausalLM):
    """RWKV-4 language model; state = per-block (att shift, aa, bb, pp, ffn shift)."""

    formats = ("rwkv_lm", "hf", "safetensors")
    saved_ops = MATMUL_OPS | {"skein::wkv4_fwd"}

    config: RWKV4Config

    def __init__(self, config: RWKV4Config) -> None:
        super().__init__(config, (Block(config, i) for i in range(config.n_layer)), nn.LayerNorm)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """RWKV-LM v4neo's scheme. With r0 = i / (n_layer - 1) (0 to 1) and r1 = 1 - i / n_layer
        (1 to almost 0) for layer i, and channel c of C:
        time_decay_c = -5 + 8 (c / (C - 1))^(0.7 + 1.3 r0); time_first_c = ln 0.3 + 0.5 ((c + 1) mod 3 - 1);
        time_mix_k = (c / C)^r1, time_mix_v = (c / C)^r1 + 0.3 r0, time_mix_r = (c / C)^(0.5 r1)
        (channel mix: k and r both (c / C)^r1). Matrices: att key/receptance/output and ffn
        receptance/value zero; others orthogonal with gain sqrt(rows / cols) when rows > cols
        (head: times head_init_gain); embedding uniform(+-emb_init_scale); LayerNorms 1 and 0."""
        cfg = self.config
        C, L = cfg.d_model, cfg.n_layer
        ch = torch.arange(C, dtype=torch.float64)
        frac = ch / C
        for i, block in enumerate(self.blocks):
            r0 = i / (L - 1) if L > 1 else 0.0
            r1 = 1.0 - i / L
            att, ffn = block.att, block.ffn
            att.time_decay.copy_(-5 + 8 * (ch / max(C - 1, 1)) ** (0.7 + 1.3 * r0))
            att.time_first.copy_(math.log(0.3) + 0.5 * ((ch + 1) % 3 - 1))
            att.time_mix_k.copy_(frac.pow(r1).view(1, 1, C))
            att.time_mix_v.copy_((frac.pow(r1) + 0.3 * r0).view(1, 1, C))
            att.time_mix_r.copy_(frac.pow(0.5 * r1).view(1, 1, C))
            ffn.time_mix_k.copy_(frac.pow(r1).view(1, 1, C))
            ffn.time_mix_r.copy_(frac.pow(r1).view(1, 1, C))
            for lin in (att.key, att.receptance, att.output, ffn.receptance, ffn.value):
                nn.init.zeros_(lin.weight)
            for lin in (att.value, ffn.key):
                nn.init.orthogonal_(lin.weight, gain=_shape_gain(lin.weight))
            for ln in (block.ln0, block.ln1, block.ln2, self.ln_out):
                if ln is not None:
                    ln.reset_parameters()
        nn.init.uniform_(self.emb.weight, -cfg.emb_init_scale, cfg.emb_init_scale)
        nn.init.orthogonal_(self.head.weight, gain=cfg.head_init_gain * _shape_gain(self.head.weight))

    def lr_multipliers(self) -> dict[str, float]:
        """time_decay and time_first train faster (RWKV-LM v4neo's layerwise_lr, stage != 2)."""
        scales = {
            "att.time_decay": self.config.lr_scale_time_decay,
            "att.time_first": self.config.lr_scale_time_first,
        }
        out = {}
        for name, _ in self.named_parameters():
            for suffix, scale in scales.items():
                if name.endswith(suffix):
                    out[name] = scale
        return out

    def flops_per_token(self, ctx_len: int) -> float:
        """6N plus the WKV recurrence: WKV_STEP_FLOPS per channel and layer forward, times 3 for
        forward + backward; independent of ctx_len."""
        return (
            super().flops_per_token(ctx_len)
            + 3.0 * WKV_STEP_FLOPS * self.config.n_layer * self.config.d_model
        )


def _shape_gain(weight: Tensor) -> float:
    rows, cols = weight.shape
    return math.sqrt(rows / cols) if rows > cols else 1.0
