"""What the suites share: the device, autocast, and for the language-model suites loading a model,
the held-out data, the run config's context length and the byte length of every token id."""

from __future__ import annotations

from typing import Any

import torch

from skein.data.dataset import PretrainDataset
from skein.data.tokenizer import ByteTokenizer, RwkvWorldTokenizer, Tokenizer
from skein.train.checkpoints.weights import Source, load_source
from skein.train.parallel.execution import inference_execution
from skein.train.typed import ConfigError


def load(model: str, device: torch.device) -> Source:
    """load_source, with bad paths as one-line errors; the model in eval mode on `device`."""
    try:
        src = load_source(model)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--model {model}: {e}") from e
    src.model.to(device).eval()
    return src


def run_ctx_len(src: Source) -> int | None:
    """The context length of the last stage of the run config, when there is one."""
    stages = (src.run_config or {}).get("stages") or []
    return int(stages[-1]["ctx_len"]) if stages and "ctx_len" in stages[-1] else None


def held_out(data: list[str], ctx_len: int, seed: int) -> PretrainDataset:
    if not data:
        raise ConfigError("--data: name at least one held-out binidx prefix (e.g. from `skein prepare`)")
    try:
        return PretrainDataset(data, None, ctx_len, seed=seed)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--data {data}: {e}") from e


def pick_device(device: str) -> torch.device:
    """ "auto" -> CUDA when present, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r}: {e}") from e


def autocast(device: torch.device, precision: str = "auto") -> Any:
    """The autocast of a run's trainer.precision on `device` (auto: bf16 on CUDA, none elsewhere;
    parallel/execution.py)."""
    return inference_execution(device, precision).autocast()


def token_bytes(tok: Tokenizer, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes of every token id, float64 [vocab_size] (0 for EOD and ids with no text)."""
    out = torch.zeros(vocab_size, dtype=torch.float64)
    if isinstance(tok, ByteTokenizer):
        out[: min(256, vocab_size)] = 1
    elif isinstance(tok, RwkvWorldTokenizer):
        for i, b in tok.id_to_bytes.items():
            if i < vocab_size:
                out[i] = len(b)
    else:
        for i in range(min(tok.vocab_size, vocab_size)):
            if i != tok.eod_id:
                out[i] = len(tok.decode([i]).encode("utf-8"))
    return out


def zoology_batch_size(seq_len: int) -> int:
    """Zoology's MQAR batch size: 512 up to length 128, 256 at 256, 128 beyond."""
    return 512 if seq_len <= 128 else 256 if seq_len <= 256 else 128
