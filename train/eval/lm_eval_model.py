"""A skein model as an lm-evaluation-harness `LM`, registered under the name "skein".

    lm_eval.simple_evaluate(model="skein", model_args={"path": "runs/x"}, tasks=[...])

(after `import skein.train.eval.lm_eval_model`; `skein-lm-eval` is the `lm_eval` command line with
it imported). The model is anything `skein export` reads, with its tokenizer and the run's
trainer.precision. Scoring:

- loglikelihood: context + continuation in batches (right-padded; every model is causal, so the
  padding never reaches a scored position), fed `max_length` tokens at a time with the state
  carried. With `share_context` and a model whose state has a fixed size (every recurrent one),
  each distinct context runs once and its state starts all of its continuations.
- loglikelihood_rolling: a recurrent model reads the whole document in one pass (chunks of
  `max_length`, the state carried); the transformer scores lm-eval's disjoint windows of
  `max_length` tokens.
- generate_until: the prompt once, then one step per token from the carried state
  (skein.train.commands.generate.sample_tokens), stopped at the first `until` string or end of document.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import Tensor
from tqdm import tqdm

from skein.data.tokenizer import load_tokenizer
from skein.rwkv.models import CausalLM
from skein.rwkv.models.common import State, map_state
from skein.train.commands.generate import sample_tokens
from skein.train.eval.common import load, pick_device, run_ctx_len
from skein.train.typed import ConfigError

DEFAULT_MAX_LENGTH = 2048
"""Tokens per forward pass (and the transformer's window) when the run config names no ctx_len."""
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed", "bf16-true")


def precision_of(run_config: dict[str, Any] | None, device: torch.device) -> str:
    """The run's trainer.precision with `auto` resolved as training resolves it (bf16-mixed on a
    GPU, 32 elsewhere)."""
    p = str(((run_config or {}).get("trainer") or {}).get("precision", "auto"))
    if p not in PRECISIONS:
        raise ConfigError(f"trainer.precision {p!r}: one of {PRECISIONS}")
    return p if p != "auto" else ("bf16-mixed" if device.type == "cuda" else "32")


def cast_context(precision: str, device: torch.device) -> Any:
    """The autocast a precision computes under (bf16-true: the weights are cast instead)."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def _leaves(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (list, tuple)):
        return [t for s in state for t in _leaves(s)]
    if isinstance(state, dict):
        return [t for s in state.values() for t in _leaves(s)]
    return []


def _zip_states(fn: Callable[[list[Tensor]], Tensor], states: Sequence[Any]) -> Any:
    """One state from several of the same structure, `fn` applied to each tuple of tensors."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(list(states))
    if isinstance(first, (list, tuple)):
        return type(first)(_zip_states(fn, [s[i] for s in states]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _zip_states(fn, [s[k] for s in states]) for k in first}
    return first


def stack_states(states: Sequence[State]) -> State:
    """The batch-1 states of several sequences as one batch (concatenated along dim 0)."""
    return _zip_states(lambda ts: torch.cat(ts, dim=0), states)


@torch.inference_mode()
def has_fixed_state(model: CausalLM, device: torch.device) -> bool:
    """True when the model's state does not grow with the tokens read and is batch-first (every
    recurrent architecture; not the transformer's key/value cache): probed on one and two tokens."""
    x = torch.zeros(1, 2, dtype=torch.long, device=device)
    one = [t.shape for t in _leaves(model(x[:, :1])[1])]
    two = [t.shape for t in _leaves(model(x)[1])]
    pair = [t.shape for t in _leaves(model(x.expand(2, 2))[1])]
    return bool(one) and one == two and all(p[0] == 2 * o[0] == 2 for o, p in zip(one, pair))


@torch.inference_mode()
def score_pairs(
    model: CausalLM,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    chunk_len: int,
    device: torch.device,
    cast: Any = None,
    progress: bool = False,
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether every continuation token is the argmax) per
    (context ids, continuation ids); each context has at least one id. Longest first, batches
    right-padded, fed chunk_len tokens at a time with the state carried (under the context
    manager `cast`, e.g. an autocast)."""
    cast = cast if cast is not None else nullcontext()
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    for b in tqdm(range(0, len(order), batch_size), disable=not progress, desc="loglikelihood"):
        idx = order[b : b + batch_size]
        x, y = _padded([pairs[i][0] + pairs[i][1] for i in idx])
        logp, hit = target_scores(model, x, y, chunk_len, device, cast)
        for r, i in enumerate(idx):
            ctx, cont = pairs[i]
            span = slice(len(ctx) - 1, len(ctx) - 1 + len(cont))
            out[i] = (float(logp[r, span].sum()), bool(hit[r, span].all()))
    return out


@torch.inference_mode()
def score_shared(
    model: CausalLM,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    chunk_len: int,
    device: torch.device,
    cast: Any = None,
    progress: bool = False,
) -> list[tuple[float, bool]]:
    """score_pairs for a model with a fixed-size state (has_fixed_state): each distinct context is
    read once (a batch of them at a time, context_states), and the continuations of that batch run
    from the stacked states of their contexts; then the states are dropped, so memory holds one
    batch of states whatever the number of requests."""
    cast = cast if cast is not None else nullcontext()
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(pairs):
        by_context.setdefault(tuple(ctx), []).append(i)
    contexts = sorted(by_context, key=len, reverse=True)
    out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    for b in tqdm(range(0, len(contexts), batch_size), disable=not progress, desc="contexts"):
        batch = contexts[b : b + batch_size]
        states = context_states(model, batch, chunk_len, device, cast)
        reqs = sorted((i for c in batch for i in by_context[c]), key=lambda i: -len(pairs[i][1]))
        for c in range(0, len(reqs), batch_size):
            idx = reqs[c : c + batch_size]
            ctxs = [tuple(pairs[i][0]) for i in idx]
            firsts = torch.stack([states[k][1] for k in ctxs])  # [B, V] log-probabilities on the device
            heads = torch.tensor([pairs[i][1][0] for i in idx], device=firsts.device)
            first_lp = firsts.gather(1, heads[:, None])[:, 0].double().cpu()
            first_hit = (firsts.argmax(-1) == heads).cpu()
            logp = hit = None
            if max(len(pairs[i][1]) for i in idx) > 1:
                x, y = _padded([pairs[i][1] for i in idx])
                state = stack_states([states[k][0] for k in ctxs])
                logp, hit = target_scores(model, x, y, chunk_len, device, cast, state)
            for r, i in enumerate(idx):
                n = len(pairs[i][1]) - 1
                rest_lp = float(logp[r, :n].sum()) if n else 0.0
                rest_hit = bool(hit[r, :n].all()) if n else True
                out[i] = (float(first_lp[r]) + rest_lp, bool(first_hit[r]) and rest_hit)
    return out


def context_states(
    model: CausalLM, batch: Sequence[tuple[int, ...]], chunk_len: int, device: torch.device, cast: Any
) -> dict[tuple[int, ...], tuple[State, Tensor]]:
    """context -> (its batch-1 state after its last token, log-probabilities [V] of the next token,
    on the device), for contexts sorted longest first and a model with a fixed-size state. They
    run together up to the shortest one's end, where that one's state is taken; the others go on
    from their states, so nothing reads padding."""
    out: dict[tuple[int, ...], tuple[State, Tensor]] = {}
    x = torch.zeros(len(batch), len(batch[0]), dtype=torch.long)
    for r, c in enumerate(batch):
        x[r, : len(c)] = torch.tensor(c)
    state, start, active = None, 0, len(batch)
    for end in sorted({len(c) for c in batch}):
        for s in range(start, end, chunk_len):
            with cast:
                logits, state = model(x[:active, s : min(s + chunk_len, end)].to(device), state)
        while active and len(batch[active - 1]) == end:
            active -= 1
            row = map_state(lambda t, r=active: t[r : r + 1].clone(), state)
            out[batch[active]] = (row, F.log_softmax(logits[active, -1].float(), dim=-1))
        state, start = map_state(lambda t, n=active: t[:n], state), end
    return out


def _padded(seqs: Sequence[list[int]]) -> tuple[Tensor, Tensor]:
    """(inputs, targets) [B, T]: each sequence without its last id, and without its first,
    right-padded with 0 to the longest."""
    T = max(len(q) for q in seqs) - 1
    x = torch.zeros(len(seqs), T, dtype=torch.long)
    y = torch.zeros(len(seqs), T, dtype=torch.long)
    for r, q in enumerate(seqs):
        x[r, : len(q) - 1] = torch.tensor(q[:-1])
        y[r, : len(q) - 1] = torch.tensor(q[1:])
    return x, y


def target_scores(
    model: CausalLM,
    x: Tensor,
    y: Tensor,
    chunk_len: int,
    device: torch.device,
    cast: Any,
    state: State | None = None,
) -> tuple[Tensor, Tensor]:
    """(log p(y | inputs up to x) float64, y is the argmax bool), both [B, T] on the CPU, for
    inputs x [B, T] fed chunk_len tokens at a time with the state carried; only these leave the
    device, never the logits."""
    lp, hit = [], []
    for s in range(0, x.shape[1], chunk_len):
        with cast:
            logits, state = model(x[:, s : s + chunk_len].to(device), state)
        logits = logits.float()
        yc = y[:, s : s + chunk_len].to(device)
        lp.append((logits.gather(-1, yc[..., None])[..., 0] - logits.logsumexp(-1)).double().cpu())
        hit.append((logits.argmax(-1) == yc).cpu())
    return torch.cat(lp, dim=1), torch.cat(hit, dim=1)


@register_model("skein")
class SkeinLM(TemplateLM):
    """lm-eval's view of a skein model (model_args: path=..., and the options below)."""

    def __init__(
        self,
        path: str,
        batch_size: int | str = 8,
        device: str = "auto",
        tokenizer: str | None = None,
        precision: str | None = None,
        max_length: int | None = None,
        share_context: bool = True,
        max_batch_size: int | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            raise ConfigError(f"--model_args: unknown keys {sorted(unused)} for skein")
        self._device = pick_device(device or "auto")
        src = load(path, self._device)
        self.path = src.path
        self.model = src.model
        spec = tokenizer or src.tokenizer_spec()
        if spec is None:
            raise ConfigError(f"{path}: no tokenizer recorded; pass tokenizer=byte|hf:<file>|rwkv_world")
        self.tok = load_tokenizer(spec)
        self.tokenizer_spec = spec
        self.precision = (
            precision_of(src.run_config, self._device) if precision in (None, "", "auto") else precision
        )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: one of {PRECISIONS}")
        if self.precision == "bf16-true":
            self.model.to(torch.bfloat16)
        self.max_length = int(max_length or run_ctx_len(src) or DEFAULT_MAX_LENGTH)
        size = str(batch_size)
        self.batch_size = int(size) if size.isdigit() else 8  # "auto": the default
        self.share_context = str(share_context).lower() not in ("false", "0", "no")
        self.recurrent = has_fixed_state(self.model, self._device)
        self.banned = self.tok.unknown_ids(self.model.config.vocab_size)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> SkeinLM:
        """model_args (path=...,device=cpu) over lm_eval's own options (--device, --batch_size)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> SkeinLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    def _cast(self) -> Any:
        return cast_context(self.precision, self._device)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eod_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer_spec

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """A transformer sees at most max_length + 1 tokens (the oldest context is dropped)."""
        if self.recurrent:
            return ctx, cont
        keep = max(1, self.max_length + 1 - len(cont))
        return ctx[-keep:], cont[-self.max_length :]

    def _score(self, pairs: list[tuple[list[int], list[int]]], progress: bool) -> list[tuple[float, bool]]:
        pairs = [self._fit(c, x) for c, x in pairs]
        fn = score_shared if self.recurrent and self.share_context else score_pairs
        return fn(self.model, pairs, self.batch_size, self.max_length, self._device, self._cast(), progress)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list:
        results = self._score([(list(c), list(x)) for _, c, x in requests], not disable_tqdm)
        for (key, _, _), r in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, r)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        docs, pairs = [], []
        for n, req in enumerate(requests):
            ids = self.tok_encode(req.args[0])
            if self.recurrent:
                windows = [([self.eot_token_id], ids)] if ids else []
            else:
                windows = [
                    make_disjoint_window(w)
                    for w in get_rolling_token_windows(ids, self.eot_token_id, self.max_length, 1)
                ]
            docs += [n] * len(windows)
            pairs += windows
        sums = [0.0] * len(requests)
        for n, (lp, _) in zip(docs, score_pairs(self.model, pairs, self.batch_size, self.max_length,
                                                self._device, self._cast(), not disable_tqdm)):  # fmt: skip
            sums[n] += lp
        for req, s in zip(requests, sums):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), s)
        return sums

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            sample = bool(kwargs.get("do_sample", False))
            temperature = float(kwargs.get("temperature", 1.0)) if sample else 0.0
            top_p = float(kwargs.get("top_p", 1.0))
            ids = self.tok_encode(context) or [self.eot_token_id]
            if not self.recurrent:
                ids = ids[-max(1, self.max_length - max_new) :]

            def stop(new: list[int], until: list[str] = until) -> bool:
                return new[-1] == self.eot_token_id or any(u in self.tok_decode(new) for u in until)

            with self._cast():
                new, _ = sample_tokens(self.model, ids, max_new, temperature, top_p, 0, self.banned, stop)
            text = self.tok_decode([i for i in new if i != self.eot_token_id])
            for u in until:
                text = text.split(u)[0] if u else text
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out

    def get_model_info(self) -> dict[str, Any]:
        return {"model_path": self.path, "precision": self.precision, "recurrent": self.recurrent,
                "max_length": self.max_length, "tokenizer": self.tokenizer_spec}  # fmt: skip


def lm_eval_cli() -> None:
    """`skein-lm-eval ...`: lm_eval's command line (same arguments) with "skein" registered, e.g.
    `skein-lm-eval run --model skein --model_args path=runs/x --tasks arc_easy`."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    lm_eval_cli()
