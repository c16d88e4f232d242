"""Checks a run config against this machine and its files before anything is built or written:
data shards, tokenizer, vocabulary, hardware, snapshot format. Every problem is collected, and
one ConfigError lists them all with what to change, so a run that cannot start leaves nothing
behind and the user fixes everything at once."""

from __future__ import annotations

from skein.train.config import RunConfig
from skein.train.parallel.execution import hardware_problems
from skein.train.typed import ConfigError


def _shards(prefixes: list[str], key: str) -> list[str]:
    from skein.data.binidx import resolve_shards

    problems = []
    for i, prefix in enumerate(prefixes):
        try:
            for shard in resolve_shards(prefix):
                for ext in (".bin", ".idx"):
                    with open(shard + ext, "rb"):
                        pass
        except OSError as e:
            detail = f"{e.filename}: {e.strerror}" if e.filename else str(e)
            problems.append(
                f"{key}[{i}]={prefix}: {detail}; run `skein prepare --output {prefix}` or fix the path"
            )
    return problems


def vocab_problems(cfg: RunConfig) -> list[str]:
    from skein.data.binidx import read_meta
    from skein.data.tokenizer import load_tokenizer

    vocab, want, problems = cfg.model.vocab_size, cfg.data.tokenizer, []
    metas = []
    for i, prefix in enumerate(cfg.data.train):
        try:
            meta = read_meta(prefix)
        except (OSError, ValueError) as e:
            problems.append(
                f"data.train[{i}]={prefix}: unreadable meta file ({e}); run `skein prepare` again"
            )
            continue
        metas.append(meta)
        if meta is None:
            continue
        have = meta.get("tokenizer", {}).get("spec")
        if meta["vocab_size"] > vocab:
            problems.append(
                f"data.train[{i}]={prefix}: tokenized with a vocabulary of {meta['vocab_size']} ({have}), "
                f"larger than model.vocab_size={vocab}; raise model.vocab_size"
            )
        if want is not None and have is not None and want != have:
            problems.append(
                f"data.train[{i}]={prefix}: made with tokenizer {have!r}, but data.tokenizer is {want!r}; "
                "make them agree"
            )
    if want is not None and any(m is None for m in metas):  # shards without meta: ask the tokenizer
        try:
            tok_vocab = load_tokenizer(want).vocab_size
        except (OSError, ValueError) as e:
            return [
                *problems,
                f"data.tokenizer={want}: {e}; give the tokenizer's path or set data.tokenizer: null",
            ]
        if tok_vocab > vocab:
            problems.append(
                f"data.tokenizer={want} has {tok_vocab} ids, more than model.vocab_size={vocab}; raise model.vocab_size"
            )
    return problems + token_range_problems(cfg)


def token_range_problems(cfg: RunConfig) -> list[str]:
    """Shards (training and held-out) holding a token id that is negative (a dtype code of the
    wrong signedness) or >= model.vocab_size; the range of each shard is scanned once and kept
    beside it (data/token_range.py)."""
    from skein.data.binidx import BinIdxDataset, BinIdxError, resolve_shards
    from skein.data.token_range import check_token_range

    problems = []
    for prefix in [*cfg.data.train, *cfg.eval.val]:
        for shard in resolve_shards(prefix):
            try:
                check_token_range(BinIdxDataset(shard), cfg.model.vocab_size)
            except BinIdxError as e:
                problems.append(str(e))
    return problems


def _hardware(cfg: RunConfig) -> list[str]:
    return hardware_problems(cfg.trainer, cfg.optim.on_nonfinite)


def _snapshot(cfg: RunConfig) -> list[str]:
    from skein.rwkv.convert.rwkv_lm import check_format_config
    from skein.rwkv.models import model_class

    if not cfg.checkpoint.snapshot_every_steps or "rwkv_lm" not in model_class(cfg.model.arch).formats:
        return []
    try:
        check_format_config(cfg.model)  # snapshots are RWKV-LM .pth files: refuse now, not mid-run
    except ValueError as e:
        return [f"checkpoint.snapshot_every_steps: {e}"]
    return []


def problems(cfg: RunConfig) -> list[str]:
    """Everything in `cfg` that stops it from running here, each with what to change."""
    out = []
    if not cfg.data.train:
        out.append("data.train: no binidx prefixes given; list the `skein prepare --output` prefixes")
    out += _shards(cfg.data.train, "data.train") + _shards(cfg.eval.val, "eval.val")
    if not out:
        out += vocab_problems(cfg)
    return out + _hardware(cfg) + _snapshot(cfg)


def check_run(cfg: RunConfig) -> None:
    """Raise one ConfigError listing every problem `problems` finds (nothing when there is none)."""
    found = problems(cfg)
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(found, 1))
        raise ConfigError(f"the config cannot run here; change {len(found)} things: {listed}")
