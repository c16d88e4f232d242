"""DeltaProduct language model (Gated DeltaProduct; n_householder = 1 is DeltaNet, with the gate
Gated DeltaNet): pre-norm blocks of a DeltaProduct mixer and a SwiGLU MLP.

Mixer, per token x (docs/models/deltaproduct.md has the full description):
    q = silu(conv(W_q x)), k_j = silu(conv(W_k x))_j, v_j = silu(conv(W_v x))_j  (j = 1..n_h)
    q, k_j L2-normalised per head; beta_j = sigmoid(W_b x)_j (times 2 with negative eigenvalues)
    g = -exp(A_log) * softplus(W_a x + dt_bias)               (log forget gate, Mamba-2 style)
    o = DeltaProduct(q, k, v, beta, g); y = W_o [RMSNorm_head(o) * silu(W_g x)]

Block state: (conv state of q, k, v, recurrent state [B, H, K, V] float32), or just the
recurrent state without the short convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skein.rwkv.models.common import MATMUL_OPS, CausalLM, ModelConfig, PreNormBlock, ShortConv
from skein.rwkv.ops.delta_product import delta_product

BlockState = tuple[Tensor, ...]


@dataclass(kw_only=True)
class DeltaProductConfig(ModelConfig):
    arch: str = "deltaproduct"
    recurrent = True
    n_head: int = 6
    """Number of heads of the mixer."""
    head_k_dim: int | None = None
    """Key (and query) size per head; None means d_model / n_head."""
    head_v_dim: int | None = None
    """Value size per head; None means head_k_dim * expand_v."""
    expand_v: float = 2.0
    """head_v_dim / head_k_dim when head_v_dim is None."""
    n_householder: int = 2
    """Householder steps per token (n_h); 1 gives DeltaNet (Gated DeltaNet with use_gate)."""
    allow_neg_eigval: bool = True
    """beta = 2 sigmoid(.) in (0, 2), so each step can reflect (needed for state tracking);
    otherwise beta = sigmoid(.) in (0, 1)."""
    use_gate: bool = True
    """Per-head forget gate g = -exp(A_log) softplus(a_proj(x) + dt_bias), applied once per token."""
    use_short_conv: bool = True
    """Causal depthwise convolution + SiLU on q, k, v (otherwise SiLU only)."""
    conv_size: int = 4
    """Kernel size of the short convolution."""
    use_output_gate: bool = True
    """Multiply the per-head RMSNorm of the mixer output by silu(g_proj(x))."""
    d_ffn: int | None = None
    """SwiGLU hidden width; None means 8/3 d_model rounded up to a multiple of 64."""
    norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    qk_norm_eps: float = 1e-6
    """Epsilon of the L2 normalisation of q and k: x / sqrt(|x|^2 + eps)."""
    init_std: float = 0.02
    """Standard deviation of the normal init of embedding, projections, convolutions and head."""
    a_init_range: tuple[float, float] = (0.0, 16.0)
    """A = exp(A_log) is drawn uniformly from this range at init."""
    dt_min: float = 0.001
    """dt = softplus(dt_bias) is drawn log-uniformly from [dt_min, dt_max] at init."""
    dt_max: float = 0.1
    """Upper end of the dt init range."""
    dt_init_floor: float = 1e-4
    """Lower clamp of the initial dt."""

    def state_size(self, seq_len: int) -> int:
        """One K x V matrix per head."""
        return self.n_head * self.head_k_dim * self.head_v_dim

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_head <= 0:
            raise ValueError(f"model.n_head must be positive, got {self.n_head}")
        if self.head_k_dim is None:
            if self.d_model % self.n_head:
                raise ValueError(
                    f"model.d_model={self.d_model} is not a multiple of model.n_head={self.n_head} "
                    "(or set model.head_k_dim)"
                )
            self.head_k_dim = self.d_model // self.n_head
        if self.head_k_dim <= 0:
            raise ValueError(f"model.head_k_dim must be positive, got {self.head_k_dim}")
        if self.head_v_dim is None:
            if self.expand_v <= 0 or not float(self.head_k_dim * self.expand_v).is_integer():
                raise ValueError(
                    f"model.expand_v={self.expand_v} times head_k_dim={self.head_k_dim} must be a "
                    "positive integer (or set model.head_v_dim)"
                )
            self.head_v_dim = int(self.head_k_dim * self.expand_v)
        if self.head_v_dim <= 0:
            raise ValueError(f"model.head_v_dim must be positive, got {self.head_v_dim}")
        if self.n_householder < 1:
            raise ValueError(f"model.n_householder must be >= 1, got {self.n_householder}")
        if self.use_short_conv and self.conv_size < 2:
            raise ValueError(f"model.conv_size must be >= 2 with use_short_conv, got {self.conv_size}")
        if self.d_ffn is None:
            self.d_ffn = 64 * math.ceil(8 * self.d_model / 3 / 64)
        if self.d_ffn <= 0:
            raise ValueError(f"model.d_ffn must be positive, got {self.d_ffn}")
        for name in ("norm_eps", "qk_norm_eps", "init_std", "dt_min", "dt_max", "dt_init_floor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.dt_min > self.dt_max:
            raise ValueError(f"model.dt_min={self.dt_min} exceeds model.dt_max={self.dt_max}")
        if len(self.a_init_range) != 2:
            raise ValueError(f"model.a_init_range must be [low, high], got {self.a_init_range}")
        self.a_init_range = lo, hi = (float(self.a_init_range[0]), float(self.a_init_range[1]))
        if not 0 <= lo < hi:
            raise ValueError(f"model.a_init_range must satisfy 0 <= low < high, got {self.a_init_range}")


def l2_normalize(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(|x|^2 + eps) over the last dim, in float32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


class DeltaProductMixer(nn.Module):
    """The sequence mixer: forward(x [B, T, C], state) -> (y [B, T, C], state)."""

    def __init__(self, cfg: DeltaProductConfig) -> None:
        super().__init__()
        self.cfg = cfg
        H, K, V, n = cfg.n_head, cfg.head_k_dim, cfg.head_v_dim, cfg.n_householder
        d = cfg.d_model
        self.q_proj = nn.Linear(d, H * K, bias=False)
        self.k_proj = nn.Linear(d, n * H * K, bias=False)  # features ordered (n_h, head, K)
        self.v_proj = nn.Linear(d, n * H * V, bias=False)
        self.b_proj = nn.Linear(d, n * H, bias=False)
        if cfg.use_gate:
            self.a_proj = nn.Linear(d, H, bias=False)
            self.A_log = nn.Parameter(torch.empty(H))
            self.dt_bias = nn.Parameter(torch.empty(H))
        if cfg.use_short_conv:
            self.q_conv = ShortConv(H * K, cfg.conv_size)
            self.k_conv = ShortConv(n * H * K, cfg.conv_size)
            self.v_conv = ShortConv(n * H * V, cfg.conv_size)
        if cfg.use_output_gate:
            self.g_proj = nn.Linear(d, H * V, bias=False)
        self.o_norm = nn.Parameter(torch.ones(V))  # per-head RMSNorm weight, shared by the heads
        self.o_proj = nn.Linear(H * V, d, bias=False)

    def reset_gate_parameters(self) -> None:
        """A ~ U(a_init_range), A_log = log A; dt log-uniform in [dt_min, dt_max] (clamped at
        dt_init_floor) and dt_bias = softplus^-1(dt) = dt + log(1 - exp(-dt))."""
        if not self.cfg.use_gate:
            return
        cfg = self.cfg
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(*cfg.a_init_range).log())
            lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
            dt = torch.exp(torch.rand_like(self.dt_bias) * (hi - lo) + lo).clamp_min(cfg.dt_init_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: Tensor, state: BlockState | None) -> tuple[Tensor, BlockState]:
        cfg = self.cfg
        B, T, _ = x.shape
        H, K, V, n = cfg.n_head, cfg.head_k_dim, cfg.head_v_dim, cfg.n_householder
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if cfg.use_short_conv:
            cq, ck, cv, S = state if state is not None else (None,) * 4
            q, cq = self.q_conv(q, cq)
            k, ck = self.k_conv(k, ck)
            v, cv = self.v_conv(v, cv)
        else:
            S = state[0] if state is not None else None
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        # reshape, not view: after the short convolution these are transposed [B, C, T] buffers
        q = l2_normalize(q.reshape(B, T, H, K), cfg.qk_norm_eps)
        k = l2_normalize(k.reshape(B, T, n, H, K), cfg.qk_norm_eps)
        v = v.reshape(B, T, n, H, V)
        beta = torch.sigmoid(self.b_proj(x).float()).view(B, T, n, H)
        if cfg.allow_neg_eigval:
            beta = 2.0 * beta
        g = None
        if cfg.use_gate:
            g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        o, S = delta_product(q, k, v, beta, g, S, backend=cfg.kernel)
        o = o.float()
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * self.o_norm.float()
        if cfg.use_output_gate:
            o = o * F.silu(self.g_proj(x).float().view(B, T, H, V))
        y = self.o_proj(o.reshape(B, T, H * V).to(x.dtype))
        new_state = (cq, ck, cv, S) if cfg.use_short_conv else (S,)
        return y, new_state


class DeltaProduct(CausalLM):
    """Embedding -> DeltaProduct blocks -> RMSNorm -> head; state = one BlockState per block."""

    formats = ("fla", "safetensors")
    saved_ops = MATMUL_OPS | {"skein::delta_product_fwd"}

    config: DeltaProductConfig

    def __init__(self, config: DeltaProductConfig) -> None:
        blocks = (
            PreNormBlock(DeltaProductMixer(config), config.d_model, config.d_ffn, config.norm_eps)
            for _ in range(config.n_layer)
        )
        super().__init__(config, blocks, nn.RMSNorm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for embedding, every projection, the convolutions and the head
        (no depth scaling); norm weights 1; A_log and dt_bias as in Mamba-2."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, ShortConv)):
                nn.init.normal_(module.weight, std=self.config.init_std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, DeltaProductMixer):
                nn.init.ones_(module.o_norm)
                module.reset_gate_parameters()

    def flops_per_token(self, ctx_len: int) -> float:
        """6N plus the recurrence: per layer, head and token, each of the n_h Householder steps
        costs k^T S and the rank-1 update (2 K V FLOPs each) and the readout q^T S costs 2 K V,
        so (4 n_h + 2) K V forward, times 3 for forward + backward. Independent of ctx_len."""
        c = self.config
        mix = 3.0 * c.n_layer * c.n_head * (4 * c.n_householder + 2) * c.head_k_dim * c.head_v_dim
        return super().flops_per_token(ctx_len) + mix
