"""Recurrent state size per layer: the number of values a layer's sequence mixer carries from one
token to the next, the figure MQAR results are compared at. The formulas live on the model configs:

    rwkv7, deltaproduct:  num_heads * head_k_dim * head_v_dim  (one K x V matrix per head)
    rwkv4:                3 * d_model  (the WKV numerator, denominator and running maximum of
                          every channel: a vector state, not a matrix)
    llama:                2 * seq_len * n_kv_head * head_size  (the key and value cache;
                          2 * seq_len * d_model without grouped-query attention)

Token-shift and short-convolution buffers (d_model or (size - 1) channels) are left out, as in
the published comparisons.
"""

from __future__ import annotations

from skein.rwkv.models import ModelConfig


def state_size(config: ModelConfig, seq_len: int) -> int:
    """Values of recurrent state per layer of a model with this config after seq_len tokens (each
    architecture's config states its own formula, ModelConfig.state_size)."""
    try:
        return config.state_size(seq_len)
    except NotImplementedError as e:
        raise ValueError(str(e)) from e
