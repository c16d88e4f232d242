"""Llama-style transformer baseline: RMSNorm, rotary position embedding, grouped-query SDPA
attention, SwiGLU feed-forward. Its state is the key/value cache, so generation and segmented
evaluation use the same interface as the recurrent models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skein.rwkv.models.common import CausalLM, ModelConfig, PreNormBlock


@dataclass(kw_only=True)
class LlamaConfig(ModelConfig):
    arch: str = "llama"
    n_head: int = 12
    """Query heads; head size is d_model / n_head."""
    n_kv_head: int | None = None
    """Key/value heads (grouped-query attention); None means n_head."""
    d_ffn: int | None = None
    """SwiGLU hidden width; None means 8/3 d_model rounded up to a multiple of 64."""
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def state_size(self, seq_len: int) -> int:
        """The key and value cache: 2 * seq_len * n_kv_head * head size."""
        return 2 * seq_len * self.n_kv_head * (self.d_model // self.n_head)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model={self.d_model} is not a multiple of model.n_head={self.n_head}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.d_ffn is None:
            self.d_ffn = 64 * math.ceil(8 * self.d_model / 3 / 64)


def rope(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """Rotate pairs (x[..., :D/2], x[..., D/2:]) by pos * theta^(-2i/D). x: [B, H, T, D]; pos: [T]."""
    D = x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    ang = pos.to(torch.float32)[:, None] * inv[None, :]  # [T, D/2]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.head_size = cfg.d_model // cfg.n_head
        self.q = nn.Linear(cfg.d_model, cfg.n_head * self.head_size, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.n_kv_head * self.head_size, bias=False)
        self.o = nn.Linear(cfg.n_head * self.head_size, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        B, T, _ = x.shape
        H, Hk, D = self.cfg.n_head, self.cfg.n_kv_head, self.head_size
        past = 0 if cache is None else cache[0].shape[2]
        pos = torch.arange(past, past + T, device=x.device)
        q = rope(self.q(x).view(B, T, H, D).transpose(1, 2), pos, self.cfg.rope_theta)
        k, v = self.kv(x).view(B, T, 2, Hk, D).permute(2, 0, 3, 1, 4)
        k = rope(k, pos, self.cfg.rope_theta)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        mask = None
        if past and T > 1:  # queries sit at positions past..past+T-1 of the keys
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=(past == 0 and T > 1), enable_gqa=(H != Hk)
        )
        return self.o(y.transpose(1, 2).reshape(B, T, H * D)), (k, v)


class Llama(CausalLM):
    """Decoder-only transformer; state = per-block (key, value) cache."""

    config: LlamaConfig

    def __init__(self, config: LlamaConfig) -> None:
        blocks = (
            PreNormBlock(Attention(config), config.d_model, config.d_ffn, config.norm_eps)
            for _ in range(config.n_layer)
        )
        super().__init__(config, blocks, nn.RMSNorm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights; residual output projections scaled by 1/sqrt(2 n_layer)."""
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual_out = name.endswith(("o.weight", "down.weight"))
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if residual_out else 0.02
                nn.init.normal_(p, std=std)

    def flops_per_token(self, ctx_len: int) -> float:
        """6N plus causal attention: QK^T and AV cost 4 T d per layer and token forward, halved by
        the causal mask, times 3 for forward + backward."""
        return super().flops_per_token(ctx_len) + 6.0 * self.config.n_layer * self.config.d_model * ctx_len
