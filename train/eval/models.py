"""Mixer-only models for the synthetic suites (Zoology style): embedding -> n_layer x
[x + mixer(norm(x))] -> norm -> head, with no MLP, built from skein's own architectures so that
each mixer keeps its initialisation. An optional causal short convolution (the same module for
every mixer) runs on the normalised input before the mixer.

A model is named by a `MixerSpec`: the architecture, its config overrides, and the convolution size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from skein.rwkv.models import ModelConfig, build_model, model_config_from_dict
from skein.rwkv.models.common import ShortConv


@dataclass(frozen=True)
class MixerSpec:
    """A mixer for the synthetic suites."""

    arch: str
    """rwkv7, deltaproduct or llama (the attention baseline)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Model config keys besides arch, vocab_size, n_layer and d_model."""
    short_conv: int = 0
    """Kernel size of the shared short convolution before the mixer; 0 turns it off."""


def head_count(d_model: int, head: int = 64) -> int:
    """Heads of width `head` in d_model (one head when d_model < head)."""
    return max(1, d_model // head)


MIXERS: dict[str, Callable[[int], MixerSpec]] = {
    "rwkv7": lambda d: MixerSpec("rwkv7", {"head_size": min(64, d)}),
    "deltanet": lambda d: MixerSpec(
        "deltaproduct",
        {
            "n_head": head_count(d),
            "head_k_dim": min(64, d),
            "head_v_dim": min(64, d),
            "n_householder": 1,
            "allow_neg_eigval": False,
            "use_gate": False,
            "use_output_gate": False,
        },
    ),
    "attention": lambda d: MixerSpec("llama", {"n_head": head_count(d)}),
}
"""MQAR mixer name -> d_model -> spec. State per layer at d_model d: d * 64 for rwkv7 and deltanet
(d >= 64); RWKV-7's token shift and DeltaNet's q/k/v convolutions are part of those mixers."""


def mixer_spec(name: str, d_model: int) -> MixerSpec:
    """The spec of a mixer name: a MIXERS key, optionally with `_conv<k>` for the shared short
    convolution of size k (rwkv7_conv4, attention_conv4, ...)."""
    base, _, conv = name.partition("_conv")
    if base not in MIXERS or (conv and not (conv.isdigit() and int(conv) >= 2)):
        raise ValueError(f"unknown mixer {name!r}: one of {sorted(MIXERS)}, optionally with _conv<k>, k >= 2")
    spec = MIXERS[base](d_model)
    return MixerSpec(spec.arch, spec.overrides, int(conv) if conv else 0)


class MixerLM(nn.Module):
    """forward(idx [B, T]) -> logits [B, T, vocab]."""

    def __init__(self, spec: MixerSpec, vocab_size: int, n_layer: int, d_model: int) -> None:
        super().__init__()
        self.spec = spec
        self.config: ModelConfig = model_config_from_dict(
            {
                **spec.overrides,
                "arch": spec.arch,
                "vocab_size": vocab_size,
                "n_layer": n_layer,
                "d_model": d_model,
            }
        )
        full = build_model(self.config)
        self.emb, self.ln_out, self.head = full.emb, full.ln_out, full.head
        self.norms = nn.ModuleList(block.ln1 for block in full.blocks)
        self.mixers = nn.ModuleList(full.sequence_mixers())
        self.ln0 = full.embedding_norm()
        self.run_mixer = full.run_mixer
        self.convs = (
            nn.ModuleList(ShortConv(d_model, spec.short_conv, activation=False) for _ in range(n_layer))
            if spec.short_conv
            else None
        )

    def forward(self, idx: Tensor) -> Tensor:
        x = self.emb(idx)
        if self.ln0 is not None:
            x = self.ln0(x)
        carry = None
        for i, (norm, mixer) in enumerate(zip(self.norms, self.mixers)):
            h = norm(x)
            if self.convs is not None:
                h = self.convs[i](h)[0]
            h, carry = self.run_mixer(mixer, h, carry)
            x = x + h
        return self.head(self.ln_out(x))


def num_params(model: nn.Module) -> int:
    """Parameter count of a model."""
    return sum(p.numel() for p in model.parameters())


class LogitsOnly(nn.Module):
    """A skein CausalLM as idx -> logits (the state is dropped)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor) -> Tensor:
        return self.model(idx)[0]
