"""What the `skein` command answers to a user's small mistakes and questions: a missing config
names the files it may have meant, a bad override is reported against the command line, the README's
missing tokenizer says where it comes from, these answers come before torch is imported (and agree
with the full load), `params` imports torch alone, and --help shows one line per command and one
entry per option with its real default."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from skein.train.cli import main
from skein.train.typed import ConfigError
from tests.train.helpers import cli_error, run_configs, tiny_run, write_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_config_names_its_near_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROOT / "configs" / "rwkv7", tmp_path / "configs" / "rwkv7")
    monkeypatch.chdir(tmp_path)
    err = cli_error(["params", "configs/rwkv7/0.1B.yaml"], capsys)
    assert err == (
        "skein params: error: config file configs/rwkv7/0.1B.yaml does not exist; "
        "did you mean configs/rwkv7/0.1b.yaml?"
    )
    err = cli_error(["train", "configs/rwkv/1.5b.yaml"], capsys)
    assert "configs/rwkv/1.5b.yaml does not exist; did you mean configs/rwkv7/1.5b.yaml" in err
    err = cli_error(["train", "configs/nothing-like-it/run.yaml"], capsys)
    assert err.endswith("config file configs/nothing-like-it/run.yaml does not exist")


def test_an_override_error_names_the_command_line_not_the_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml"))
    err = cli_error(["train", path, "optim.lr_intt=1"], capsys)
    assert err == (
        "skein train: error: command-line override optim.lr_intt=1: optim.lr_intt: unknown key "
        "(did you mean 'lr_init'?)"
    )
    err = cli_error(["params", path, "--stages.0.micro_bsz", "four"], capsys)
    assert err.endswith(
        "command-line override stages.0.micro_bsz=four: stages[0].micro_bsz: expected an integer, got 'four'"
    )
    # a mistake in the file itself is still the file's
    cfg = tiny_run("c", tmp_path)
    cfg["optim"]["lr_intt"] = 1
    bad = str(write_config(cfg, tmp_path / "bad.yaml"))
    err = cli_error(["train", bad, "optim.lr_init=0.002"], capsys)
    assert err == f"skein train: error: {bad}: optim.lr_intt: unknown key (did you mean 'lr_init'?)"


def test_the_readme_tokenizer_line_says_where_the_file_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.jsonl").write_text('{"text": "def main(): pass"}\n')
    err = cli_error(
        [
            "prepare",
            "--inputs",
            "corpus.jsonl",
            "--output",
            "shards/mine",
            "--tokenizer",
            "hf:20B_tokenizer.json",
        ],
        capsys,
    )
    assert "20B_tokenizer.json: tokenizer JSON not found" in err
    assert "https://huggingface.co/EleutherAI/gpt-neox-20b" in err and "RWKV-v4/20B_tokenizer.json" in err
    assert not (tmp_path / "shards").exists()


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_shows_each_option_once_with_its_real_default(capsys: pytest.CaptureFixture[str]) -> None:
    from skein.train.cli import COMMANDS

    top = _help([], capsys)
    rows = top[top.index("commands:\n") + 10 : top.index("\n\n", top.index("commands:"))].splitlines()
    assert [r.split()[0] for r in rows] == list(COMMANDS)
    assert not any(re.search(r"\breturns?\b", r, re.I) for r in rows), rows
    assert "    prepare    Tokenize documents into binidx shards plus a meta file.\n" in top
    commands = [
        [name, *sub]
        for name, t in COMMANDS.items()
        for sub in ([[s] for s in t] if isinstance(t, dict) else [[]])
    ]
    for argv in commands:
        text = _help(argv, capsys)
        assert "[default: None]" not in text and "+ " not in text and "+," not in text, argv
        assert not re.search(r"\(default[^)]*\)\.? *\[default:", " ".join(text.split())), argv
        options = re.findall(r"^  (--?\w[\w-]*)", text, re.M)
        assert len(options) == len(set(options)) and not any("-" in o[2:] for o in options), (argv, options)
        assert "Returns" not in text and "return (and print)" not in text, argv
    prepare = " ".join(_help(["prepare"], capsys).split())
    assert (
        "--stdlib_max_bytes STDLIB_MAX_BYTES size cap of the default stdlib corpus, in bytes of UTF-8. [default: 4000000]"
        in prepare
    )
    assert (
        "--append_eod [BOOL] put the tokenizer's end-of-document id after every document. [default: true]"
        in prepare
    )
    assert "--inputs INPUTS [INPUTS ...] .jsonl" in prepare
    submit = " ".join(_help(["submit"], capsys).split())
    assert (
        "--nodes NODES nodes to run on; sets trainer.num_nodes (default: the config's). --gpus_per_node"
        in submit
    )


def test_config_mistakes_are_answered_before_torch_is_imported(tmp_path: Path) -> None:
    path = write_config(tiny_run("c", tmp_path, arch="rwkv7"), tmp_path / "c.yaml")
    code = (
        "import sys\nfrom skein.train.cli import main\n"
        f"for argv in {CASES!r}:\n"
        f"    n = 2 if argv[0] == 'bench' else 1\n"
        f"    try:\n        main([*argv[:n], {str(path)!r}, *argv[n:]])\n    except SystemExit as e:\n"
        "        assert e.code == 2, argv\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'numpy') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in res.stdout, res.stdout[-500:] + res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert lines == [
        "skein train: error: command-line override optim.lr_intt=1: optim.lr_intt: unknown key (did you mean 'lr_init'?)",
        "skein params: error: command-line override model.head_sise=32: model.head_sise: unknown key (did you mean 'head_size'?)",
        "skein plot-lr: error: command-line override model.d_ffn=wide: model.d_ffn: expected an integer or null, got 'wide'",
        "skein submit: error: command-line override model.arch=rwkv9: model.arch: 'rwkv9' is not one of ['deltaproduct', 'llama', 'rwkv4', 'rwkv7']",
        "skein bench train: error: command-line override trainer.precision=64: trainer.precision: 64 is not one of ['auto', '32', 'bf16-mixed', '16-mixed', 'bf16-true']",
        "skein train: error: command-line override stages.0.micro_bsz=0: stages[].micro_bsz must be positive, got 0",
    ]


CASES = [
    ["train", "optim.lr_intt=1"],
    ["params", "model.head_sise=32"],
    ["plot-lr", "--model.d_ffn", "wide"],
    ["submit", "model.arch=rwkv9", "--dry-run"],
    ["bench", "train", "trainer.precision=64"],
    ["train", "stages.0.micro_bsz=0"],
]


def test_the_first_check_reads_the_model_fields_the_classes_have() -> None:
    from skein.rwkv.models import MODELS, config_class
    from skein.train.config_check import architectures, declared_fields

    assert {arch: module for arch, (module, _) in architectures().items()} == {
        a: m[0] for a, m in MODELS.items()
    }
    for arch, (module, name) in architectures().items():
        cls = config_class(arch)
        declared = declared_fields(module, name)
        assert list(declared) == [f.name for f in fields(cls)], arch
        hints = typing.get_type_hints(cls)
        assert {k: v for k, v in declared.items() if v is not None} == {k: hints[k] for k in declared}, arch


@pytest.mark.parametrize("config", [str(p.relative_to(ROOT)) for p in run_configs()])
def test_the_first_check_agrees_with_load_config(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped config passes it; a wrong value for a random model or trainer key is refused
    by it with the message load_config gives."""
    from skein.train.config import load_config
    from skein.train.config_check import check_config

    monkeypatch.chdir(ROOT)
    check_config(config)
    cfg = load_config(config)
    rng = random.Random(config)
    model_keys = [f.name for f in fields(cfg.model) if f.name != "arch"]
    for key in [f"model.{k}" for k in rng.sample(model_keys, 4)] + ["trainer.devices", "log.wandb"]:
        bad = [f"{key}={rng.choice(['[1, 2]', '{a: 1}', 'yes please'])}"]
        with pytest.raises(ConfigError) as full:
            load_config(config, bad)
        with pytest.raises(ConfigError) as first:
            check_config(config, bad)
        assert str(first.value) == str(full.value)


SMALL = {
    "rwkv4": {"arch": "rwkv4", "vocab_size": 300, "n_layer": 3, "d_model": 96},
    "rwkv7": {"arch": "rwkv7", "vocab_size": 300, "n_layer": 2, "d_model": 128, "head_size": 32},
    "deltaproduct": {"arch": "deltaproduct", "vocab_size": 300, "n_layer": 3, "d_model": 96, "n_head": 3},
    "llama": {"arch": "llama", "vocab_size": 300, "n_layer": 2, "d_model": 64, "n_head": 4},
}


def test_params_counts_what_the_built_model_holds_importing_only_torch(tmp_path: Path) -> None:
    import torch

    from skein.rwkv import build_model

    code = "import sys\nfrom skein.train.cli import main\n"
    for arch, model in SMALL.items():
        path = write_config(tiny_run("c", tmp_path, model=model), tmp_path / f"{arch}.yaml")
        code += f"main(['params', {str(path)!r}])\n"
    code += "print('HEAVY', sorted(m for m in ('torch._dynamo', 'triton', 'sympy', 'lightning') if m in sys.modules))\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "HEAVY []" in res.stdout, res.stdout[-500:] + res.stderr[-2000:]
    printed = res.stdout.splitlines()[:-1]
    for (arch, model), line in zip(SMALL.items(), printed, strict=True):
        torch.manual_seed(0)
        built = build_model(dict(model))
        n = sum(p.numel() for p in built.parameters())
        assert (
            line == f"{arch}: {n:,} parameters ({n - built.emb.weight.numel():,} without the input embedding)"
        )


def test_status_of_a_directory_that_is_no_run_is_answered_before_torch(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom skein.train.cli import main\n"
        f"try:\n    main(['status', {str(tmp_path / 'runs' / 'typo')!r}])\nexcept SystemExit as e:\n"
        "    assert e.code == 2\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in res.stdout, res.stdout[-500:] + res.stderr[-2000:]
    assert res.stderr.strip() == (
        f"skein status: error: {tmp_path / 'runs' / 'typo'}: no config.yaml, so not a skein run directory "
        "(skein train writes one)"
    )
