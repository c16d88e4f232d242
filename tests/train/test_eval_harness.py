"""`skein eval harness` (lm-evaluation-harness) on tiny models, offline: local task YAMLs read
local JSON files; every score the harness reports is recomputed here from skein's own forward
pass, and on an RWKV-7 export from the official `rwkv` package's logits."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("lm_eval")

from skein.data.tokenizer import ByteTokenizer  # noqa: E402
from skein.rwkv.models import CausalLM  # noqa: E402
from skein.train.cli import main  # noqa: E402
from skein.train.commands.export import export  # noqa: E402
from skein.train.commands.generate import sample_tokens  # noqa: E402
from skein.train.eval.lm_eval_model import (  # noqa: E402
    SkeinLM,
    has_fixed_state,
    precision_of,
    score_pairs,
    score_shared,
)
from tests.export.helpers import run_official, save_skein_safetensors, tiny_model  # noqa: E402

WORDS = "the cat sat on a mat while dogs ran past old red barns near quiet rivers and hills".split()
CPU = torch.device("cpu")


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _save(model: CausalLM, folder: Path, precision: str = "32") -> Path:
    """model -> folder/model.pth with the model.yaml skein reads beside it (config, tokenizer,
    trainer.precision, ctx_len)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pth")
    cfg = {"model": {"arch": model.config.arch, **_fields(model)}, "data": {"tokenizer": "byte"},
           "trainer": {"precision": precision}, "stages": [{"ctx_len": 16}]}  # fmt: skip
    (folder / "model.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "model.pth"


def _fields(model: CausalLM) -> dict:
    from tests.export.helpers import TINY

    return {k: v for k, v in TINY[model.config.arch].items() if k != "arch"}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[dict]]:
    """A multiple-choice task and a perplexity task as local YAMLs over JSON lines."""
    d = tmp_path_factory.mktemp("tasks")
    rng = random.Random(7)
    mc = [{"question": _sentence(rng, rng.randint(3, 9)) + "?", "choices": [_sentence(rng, rng.randint(1, 4))
           for _ in range(4)], "label": rng.randrange(4)} for _ in range(10)]  # fmt: skip
    ppl = [{"text": _sentence(rng, rng.randint(4, 30))} for _ in range(6)]  # up to ~190 bytes > ctx_len 16
    for name, rows in (("mc", mc), ("ppl", ppl)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "mc.yaml").write_text(
        f"task: local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n"
    )
    (d / "ppl.yaml").write_text(
        f"task: local_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'ppl.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    return d, mc, ppl


def _own_logp(model: CausalLM, ids: list[int]) -> torch.Tensor:
    """log p(ids[t+1] | ids[:t+1]) for every t, from one full forward pass: [len(ids) - 1]."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0][0, :-1].double()
    return F.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_harness_cli_scores_equal_skeins_own(tasks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d, mc, ppl = tasks
    model = tiny_model("rwkv7")
    pth = _save(model, tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    main(["eval", "harness", str(pth), "--tasks", "local_mc,local_ppl", "--include_path", str(d),
          "--device", "cpu", "--batch_size", "3"])  # fmt: skip
    out = tmp_path / "runs" / "eval" / "harness"  # weights outside a run: runs/eval/<suite>
    res = json.loads((out / "results.json").read_text())["results"]
    assert json.loads((out / "args.json").read_text())["precision"] == "32"
    assert not (tmp_path / "eval").exists()

    tok = ByteTokenizer()
    right = 0
    for doc in mc:  # lm_eval: context + " " target delimiter, its trailing space moved to the continuation
        ctx = tok.encode(doc["question"])
        scores = [
            float(_own_logp(model, ctx + tok.encode(" " + c))[len(ctx) - 1 :].sum()) for c in doc["choices"]
        ]
        right += max(range(4), key=scores.__getitem__) == doc["label"]
    assert res["local_mc"]["acc,none"] == pytest.approx(right / len(mc), abs=1e-12)

    nats = n_bytes = 0.0
    for doc in ppl:  # rolling: the whole document after the end-of-document token, in one pass
        ids = tok.encode(doc["text"])
        nats -= float(_own_logp(model, [tok.eod_id, *ids]).sum())
        n_bytes += len(doc["text"].encode())
    assert res["local_ppl"]["byte_perplexity,none"] == pytest.approx(math.exp(nats / n_bytes), rel=1e-5)
    assert res["local_ppl"]["bits_per_byte,none"] == pytest.approx(nats / n_bytes / math.log(2), rel=1e-5)


def _requests(*args: tuple) -> list[SimpleNamespace]:
    return [SimpleNamespace(args=a) for a in args]


def test_loglikelihood_shared_context_greedy_and_generation(tmp_path: Path) -> None:
    model = tiny_model("rwkv7")
    lm = SkeinLM(str(_save(model, tmp_path / "m")), device="cpu", batch_size=2)
    assert lm.recurrent and lm.precision == "32" and lm.max_length == 16
    rng = random.Random(3)
    ctxs = [_sentence(rng, rng.randint(2, 12)) for _ in range(3)]  # contexts longer than max_length too
    conts = [" " + _sentence(rng, rng.randint(1, 3)) for _ in range(3)]
    pairs = [(lm.tok.encode(c), lm.tok.encode(x)) for c in ctxs for x in conts]
    own = [float(_own_logp(model, c + x)[len(c) - 1 :].sum()) for c, x in pairs]
    shared = score_shared(model, pairs, 4, 16, CPU)
    full = score_pairs(model, pairs, 4, 16, CPU)
    for o, s, f in zip(own, shared, full):
        assert s[0] == pytest.approx(o, abs=1e-4) and f[0] == pytest.approx(o, abs=1e-4)
    # the greedy continuation is flagged greedy, one token changed is not
    ctx = pairs[0][0]
    greedy, _ = sample_tokens(model, ctx, 5, 0.0, 1.0, 0)
    other = greedy[:-1] + [(greedy[-1] + 1) % 256]
    flags = [r[1] for r in lm._loglikelihood_tokens([(None, ctx, greedy), (None, ctx, other)], True)]
    assert flags == [True, False]
    # generate_until: skein's greedy sampling from the carried state, cut at the stop string
    text = lm.tok.decode(greedy)
    stop = text[2:4] if len(text) > 3 else "\n"
    gen = lm.generate_until(_requests((ctxs[0], {"until": [stop], "max_gen_toks": 5})), disable_tqdm=True)
    assert gen == [text.split(stop)[0]]


def test_transformer_scores_windows_and_state_probe(tmp_path: Path) -> None:
    assert has_fixed_state(tiny_model("deltaproduct"), CPU) and has_fixed_state(tiny_model("rwkv4"), CPU)
    model = tiny_model("llama")
    assert not has_fixed_state(model, CPU)
    lm = SkeinLM(str(_save(model, tmp_path / "m")), device="cpu")
    ids = lm.tok.encode("the cat sat on a mat while dogs ran past")  # 41 tokens: 3 windows of 16
    # lm-eval's disjoint windows: each predicts up to 16 new tokens, reading 16 tokens in all
    expected = 0.0
    seq = [lm.eot_token_id, *ids]
    for s in range(0, len(ids), 16):
        e = min(s + 16, len(ids))
        expected += float(_own_logp(model, seq[max(0, e - 16) : e + 1])[-(e - s) :].sum())
    got = lm.loglikelihood_rolling(_requests((lm.tok.decode(ids),)), disable_tqdm=True)
    assert got[0] == pytest.approx(expected, abs=1e-4)


def test_precision_comes_from_the_run(tmp_path: Path) -> None:
    assert precision_of({"trainer": {"precision": "auto"}}, CPU) == "32"
    assert precision_of({"trainer": {"precision": "auto"}}, torch.device("cuda")) == "bf16-mixed"
    assert precision_of(None, CPU) == "32"
    model = tiny_model("rwkv7")
    fp32 = SkeinLM(str(_save(model, tmp_path / "a", "32")), device="cpu")
    bf16 = SkeinLM(str(_save(model, tmp_path / "b", "bf16-mixed")), device="cpu")
    assert bf16.precision == "bf16-mixed"
    pairs = [(list(b"the cat sat"), list(b" on a mat"))]
    a, b = fp32._score(pairs, False)[0][0], bf16._score(pairs, False)[0][0]
    assert a != b and b == pytest.approx(a, rel=5e-2)  # computed under bf16 autocast, bf16 noise apart


def test_official_rwkv_package_gives_the_same_loglikelihoods(tmp_path: Path) -> None:
    model = tiny_model("rwkv7")
    source = save_skein_safetensors(model, tmp_path / "model.safetensors")
    pth = Path(export(str(source), str(tmp_path / "export.pth"), format="rwkv_lm", dtype="fp32"))
    g = torch.Generator().manual_seed(11)
    tokens = torch.randint(0, 256, (48,), generator=g).tolist()
    theirs = F.log_softmax(run_official("rwkv7", pth, tokens, tmp_path)["seq"].double(), -1)
    lm = SkeinLM(str(pth), device="cpu", tokenizer="byte", batch_size=3)
    spans = [(1, 9), (5, 6), (5, 20), (12, 48), (30, 33), (30, 47)]
    ours = lm._loglikelihood_tokens([(None, tokens[:a], tokens[a:b]) for a, b in spans], True)
    for (a, b), (lp, _) in zip(spans, ours):
        ref = float(sum(theirs[t - 1, tokens[t]] for t in range(a, b)))
        assert lp == pytest.approx(ref, abs=2e-3 * (b - a)), (a, b)
