"""The held-out loss suite: mean next-token loss of a checkpoint or exported weights on binidx
shards (the training-time ValidationLoss evaluator, run outside a trainer), in nats per token,
perplexity and bits per byte (bytes of the target tokens from the tokenizer)."""

from __future__ import annotations

import math
from typing import Any

from skein.data.tokenizer import load_tokenizer
from skein.train.config import TrainerSection
from skein.train.eval.common import autocast, held_out, load, pick_device, run_ctx_len, token_bytes
from skein.train.eval.output import ResultsDir, results_path, table
from skein.train.loop.evaluation import ValidationLoss
from skein.train.typed import ConfigError


def loss(
    model: str,
    data: list[str] | None = None,
    ctx_len: int | None = None,
    samples: int = 256,
    micro_bsz: int = 8,
    tokenizer: str | None = None,
    output: str | None = None,
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out loss of a model: nats per token, perplexity, bits per byte.

    Args:
        model: run directory, checkpoint, .pth, .safetensors or Hugging Face directory.
        data: held-out binidx prefix (or a list of them).
        ctx_len: tokens per sample (default: the run config's last stage).
        samples: number of samples (the first ones of the held-out stream, as in training).
        micro_bsz: samples per forward pass.
        tokenizer: tokenizer spec for the byte count (default: the one recorded with the run).
        output: results directory (new or empty; default <run>/eval/loss, or runs/eval/loss
            for weights outside a run).
        quick: at most 8 samples.
        device: auto (CUDA when present), cpu, cuda, ...
        seed: seed of the held-out sample order (the run's seed reproduces its eval numbers).
    """
    data = list(data or [])
    dev = pick_device(device)
    src = load(model, dev)
    ctx_len = ctx_len or run_ctx_len(src)
    if ctx_len is None:
        raise ConfigError(f"--model {model}: no run config with a ctx_len; pass --ctx_len")
    samples = min(samples, 8) if quick else samples
    spec = tokenizer or src.tokenizer_spec()
    if spec is None:
        raise ConfigError(
            f"--model {model}: no tokenizer recorded; pass --tokenizer (byte, hf:<file>, rwkv_world)"
        )
    out = ResultsDir(results_path("loss", output, model))
    # the fused chunked head, as training runs it by default: no logits of the whole batch
    chunk = TrainerSection.loss_chunk_tokens
    evaluator = ValidationLoss(held_out(data, ctx_len, seed), samples, micro_bsz, chunk_tokens=chunk)
    with autocast(dev, src.precision()):
        total = evaluator.sums(src.model).cpu()
    nats = float(total[0] / total[1])
    nbytes = token_bytes(load_tokenizer(spec), src.model.config.vocab_size)
    n_bytes = sum(float(nbytes[evaluator.dataset[n][1]].sum()) for n in range(samples))
    tokens = samples * ctx_len
    results = {
        "model": src.path,
        "data": data,
        "ctx_len": ctx_len,
        "samples": samples,
        "tokens": tokens,
        "bytes": n_bytes,
        "loss": nats,
        "perplexity": math.exp(nats),
        "bits_per_byte": nats * tokens / math.log(2) / n_bytes if n_bytes else None,
        "bytes_per_token": n_bytes / tokens,
    }
    out.json("args.json", {"model": model, "data": data, "ctx_len": ctx_len, "samples": samples,
                           "tokenizer": spec, "device": str(dev), "seed": seed})  # fmt: skip
    out.csv("loss.csv", list(results), [[str(v) if isinstance(v, list) else v for v in results.values()]])
    out.json("results.json", results)
    print(table(["model", "loss", "perplexity", "bits_per_byte"],
                [[src.path, nats, results["perplexity"], results["bits_per_byte"]]]))  # fmt: skip
    print(f"results: {out.path}")
    return results
