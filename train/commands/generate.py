"""`skein generate`: sample text from a trained model.

The prompt runs through the model's parallel form once; then each new token is one RNN step
(`model(token [1, 1], state)`), so the cost per token does not grow with the context. Sampling:
logits / temperature, softmax, nucleus (top-p) filter, one draw from a seeded generator
(temperature 0: the most likely token). Ids the tokenizer has no text for are never drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from skein.data.tokenizer import load_tokenizer
from skein.rwkv.models import CausalLM
from skein.train.commands.export import load_source
from skein.train.parallel.execution import inference_execution


def sample_next(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token id from logits [V]: the smallest set of most likely tokens whose probability
    reaches top_p, renormalised, at the given temperature (0: argmax)."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs[before >= top_p] = 0  # keep tokens until the mass before them reaches top_p
    return int(order[torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)])


@torch.inference_mode()
def sample_tokens(
    model: CausalLM,
    prompt_ids: list[int],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    banned: Sequence[int] = (),
    stop: Callable[[list[int]], bool] | None = None,
) -> tuple[list[int], Tensor]:
    """Generate max_tokens ids after prompt_ids, never one of `banned`, ending early once
    `stop(ids so far)` is true. Returns the ids and the logits [len(ids), V] each was drawn from
    (the prompt's last position, then one RNN step per token; banned ids at -inf)."""
    if not prompt_ids:
        raise ValueError("prompt_ids: at least one token is needed to start from")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    banned_ids = torch.tensor(sorted(set(banned)), dtype=torch.long)
    if len(banned_ids) and (banned_ids[0] < 0 or banned_ids[-1] >= V):
        raise ValueError(f"banned: ids must lie in [0, {V}), got {banned_ids[0]}..{banned_ids[-1]}")
    if len(banned_ids) == V:
        raise ValueError("banned: every id of the vocabulary is banned")
    logits, state = model(torch.tensor([prompt_ids], device=device))
    out, used = [], []
    for i in range(max_tokens):
        last = logits[0, -1].float().cpu().index_fill(0, banned_ids, float("-inf"))
        used.append(last)
        token = sample_next(last, temperature, top_p, generator)
        out.append(token)
        if stop is not None and stop(out):
            break
        if i + 1 < max_tokens:
            logits, state = model(torch.tensor([[token]], device=device), state)
    return out, torch.stack(used) if used else torch.empty(0, V)


def generate(
    model: str,
    prompt: str,
    max_tokens: int = 100,
    temperature: float = 1.0,
    top_p: float = 0.85,
    tokenizer: str | None = None,
    seed: int = 0,
) -> str:
    """Sample a continuation of a prompt and print it.

    Args:
        model: run directory, checkpoint, .pth, .safetensors or Hugging Face RWKV-4 directory.
        prompt: text to continue (empty: start from the end-of-document token).
        max_tokens: number of tokens to generate.
        temperature: softmax temperature (0: always the most likely token).
        top_p: nucleus sampling mass in (0, 1].
        tokenizer: tokenizer spec (byte, hf:<tokenizer.json>, rwkv_world[:<vocab>]); default: the
            run config's data.tokenizer, else the one recorded with its training shards.
        seed: seed of the sampler (same seed, same text).
    Returns:
        The generated text (without the prompt).
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    src = load_source(model)
    spec = tokenizer or src.tokenizer_spec()
    if spec is None:
        raise ValueError(
            f"{model}: no tokenizer recorded with these weights; pass --tokenizer (byte, hf:<tokenizer.json>, rwkv_world)"
        )
    tok = load_tokenizer(spec)
    if tok.vocab_size > src.model.config.vocab_size:
        raise ValueError(
            f"tokenizer {spec!r} has {tok.vocab_size} ids but the model's vocab_size is {src.model.config.vocab_size}"
        )
    ids = tok.encode(prompt) or [tok.eod_id]
    banned = tok.unknown_ids(src.model.config.vocab_size)
    device = next(src.model.parameters()).device
    with inference_execution(device, src.precision()).autocast():
        new, _ = sample_tokens(src.model, ids, max_tokens, temperature, top_p, seed, banned)
    text = tok.decode(new)
    print(prompt + text)
    return text
