"""Building blocks shared by the model files: the base config and model class, token shift,
the causal short convolution, the SwiGLU MLP, and state helpers.

Every model maps `forward(idx [B, T], state=None) -> (logits [B, T, vocab], state)`. The state is a
list with one entry per block (a tuple of tensors, or None), so a long sequence can be run in
segments with the state carried between them, and generation is `forward` with T = 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skein.rwkv.ops.common import check_backend_name

State = list[Any]


@dataclass(kw_only=True)
class ModelConfig:
    """Fields every architecture has. Subclasses add their own and set `arch`. A run config's
    `model:` section is a tagged union of the subclasses, selected by `arch`."""

    variant_key: ClassVar[str] = "arch"
    recurrent: ClassVar[bool] = False
    """The state carried from token to token has a fixed size (segment-wise training carries it);
    false for attention, whose key/value cache grows with the context."""

    arch: str = ""
    """Architecture name, as in the registry (rwkv4, rwkv7, deltaproduct, llama)."""
    vocab_size: int = 65536
    """Number of token ids the embedding and the head cover."""
    n_layer: int = 12
    """Number of blocks."""
    d_model: int = 768
    """Width of the residual stream."""
    kernel: str = "auto"
    """Sequence-mixing backend, named after its file in rwkv/ops/<op>/: auto (triton on CUDA,
    parallel elsewhere), parallel (PyTorch chunked form), naive (fp32 token loop) or triton."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "d_model"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        check_backend_name(self.kernel, "model.kernel")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def state_size(self, seq_len: int) -> int:
        """Values of state one layer's sequence mixer carries from token to token after seq_len
        tokens (token-shift and short-convolution buffers left out, as in published comparisons)."""
        raise NotImplementedError(f"state_size: no formula for architecture {self.arch!r}")

    @classmethod
    def variants(cls) -> dict[str, type[ModelConfig]]:
        """Architecture name -> config class, for every registered architecture."""
        from skein.rwkv.models.registry import MODELS, config_class

        return {arch: config_class(arch) for arch in MODELS}


MATMUL_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::_scaled_dot_product_flash_attention",
        "aten::_scaled_dot_product_efficient_attention",
        "aten::_scaled_dot_product_cudnn_attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
    }
)
"""The matmul and attention operators of every architecture."""


class CausalLM(nn.Module):
    """Base of every skein model: embedding `emb` -> `blocks` -> final norm `ln_out` -> `head`.

    Subclasses pass their blocks and final-norm class, then initialise their weights. `blocks` is
    an nn.ModuleList whose entries the trainer wraps for gradient checkpointing.
    """

    formats: ClassVar[tuple[str, ...]] = ("safetensors",)
    """Weight formats other tools load that this architecture can be written in (rwkv_lm: an
    RWKV-LM .pth; hf: transformers; fla: flash-linear-attention; safetensors: skein's own)."""

    saved_ops: ClassVar[frozenset[str]] = MATMUL_OPS
    """Operators whose outputs a selective gradient checkpoint keeps (the costly part of a block's
    recompute): the matmuls and attention here; recurrent architectures add their kernel's forward."""

    def __init__(
        self, config: ModelConfig, blocks: Iterable[nn.Module], final_norm: type[nn.LayerNorm | nn.RMSNorm]
    ) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(blocks)
        self.ln_out = final_norm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """idx [B, T] -> (logits [B, T, vocab], per-block state)."""
        x, new_state = self.hidden(idx, state)
        return self.head(x), new_state

    def hidden(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """idx [B, T] -> (final-norm output [B, T, d_model], per-block state): everything but the
        head, for losses that apply the head themselves. Each block maps (x, block_state) ->
        (x, block_state); architectures that thread more through the blocks (RWKV-7's first-layer
        values) override this."""
        state = state if state is not None else [None] * len(self.blocks)
        x = self.emb(idx)
        new_state = []
        for block, block_state in zip(self.blocks, state):
            x, block_state = block(x, block_state)
            new_state.append(block_state)
        return self.ln_out(x), new_state

    def sequence_mixers(self) -> list[nn.Module]:
        """Each block's sequence mixer (the synthetic suites build mixer-only models from them)."""
        return [block.mixer for block in self.blocks]

    def embedding_norm(self) -> nn.Module | None:
        """A norm applied to the embeddings before the first block, if the architecture has one."""
        return None

    @staticmethod
    def run_mixer(mixer: nn.Module, x: Tensor, carry: Any) -> tuple[Tensor, Any]:
        """One of `sequence_mixers()` alone on x [B, T, d_model] from a zero state -> (y, carry);
        `carry` is what flows from layer to layer besides x (None unless the architecture has it)."""
        return mixer(x, None)[0], carry

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count; with exclude_embedding, the input embedding is left out."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.emb.weight.numel()
        return n

    def flops_per_token(self, ctx_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 per weight of every matmul; the
        subclasses add their sequence-mixing term."""
        return 6.0 * (self.num_params() - self.emb.weight.numel())

    def lr_multipliers(self) -> dict[str, float]:
        """Parameter name -> learning-rate multiplier, for the parameters the architecture wants
        trained faster or slower than the rest (default: none)."""
        return {}


def token_shift(x: Tensor, prev: Tensor | None) -> tuple[Tensor, Tensor]:
    """Shift the sequence right by one token: returns (x_{t-1} for every t, x_{T-1}).

    x: [B, T, C]; prev: [B, C], the last token of the previous segment (zeros when None).
    """
    if prev is None:
        prev = x.new_zeros(x.shape[0], x.shape[2])
    shifted = torch.cat([prev.unsqueeze(1).to(x.dtype), x[:, :-1]], dim=1)
    return shifted, x[:, -1]


class ShortConv(nn.Module):
    """Causal depthwise convolution over time (kernel `size`), with its last size-1 inputs as state.

    forward(x [B, T, C], state [B, C, size-1] | None) -> (y [B, T, C], state).
    """

    def __init__(self, channels: int, size: int, activation: bool = True) -> None:
        super().__init__()
        self.size = size
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(channels, 1, size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        B, T, C = x.shape
        xt = x.transpose(1, 2)  # [B, C, T]
        if state is None:
            state = x.new_zeros(B, C, self.size - 1)
        xt = torch.cat([state.to(x.dtype), xt], dim=2)
        y = F.conv1d(xt, self.weight.to(x.dtype), groups=C)
        if self.activation:
            y = F.silu(y)
        return y.transpose(1, 2), xt[:, :, xt.shape[2] - (self.size - 1) :]


class PreNormBlock(nn.Module):
    """x + mixer(RMSNorm(x)), then + SwiGLU(RMSNorm(x)): the block of the transformer and of
    DeltaProduct. forward(x, state) -> (x, state), the state being the mixer's."""

    def __init__(self, mixer: nn.Module, d_model: int, d_ffn: int, eps: float) -> None:
        super().__init__()
        self.ln1 = nn.RMSNorm(d_model, eps=eps)
        self.mixer = mixer
        self.ln2 = nn.RMSNorm(d_model, eps=eps)
        self.ffn = SwiGLU(d_model, d_ffn)

    def forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        h, state = self.mixer(self.ln1(x), state)
        x = x + h
        return x + self.ffn(self.ln2(x)), state


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up in one matrix (the Llama / fla MLP)."""

    def __init__(self, d_model: int, d_ffn: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ffn, bias=False)
        self.down = nn.Linear(d_ffn, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """Apply `fn` to every tensor of a (nested list / tuple / dict) state; other leaves stay."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, s) for s in state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    return state


def detach_state(state: Any) -> Any:
    """Detach every tensor in a (nested) state, for truncated backpropagation through time."""
    return map_state(Tensor.detach, state)
