"""What the `skein` command answers to a user's small mistakes: a missing config names the files
it may have meant, a bad override is reported against the command line, and these answers come
before torch is imported."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from skein.train.cli import main
from tests.train.helpers import tiny_run, write_config

ROOT = Path(__file__).resolve().parents[2]


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_missing_config_names_its_near_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROOT / "configs" / "rwkv7", tmp_path / "configs" / "rwkv7")
    monkeypatch.chdir(tmp_path)
    err = _error(["params", "configs/rwkv7/0.1B.yaml"], capsys)
    assert err == (
        "skein params: error: config file configs/rwkv7/0.1B.yaml does not exist; "
        "did you mean configs/rwkv7/0.1b.yaml?"
    )
    err = _error(["train", "configs/rwkv/1.5b.yaml"], capsys)
    assert "configs/rwkv/1.5b.yaml does not exist; did you mean configs/rwkv7/1.5b.yaml" in err
    err = _error(["train", "configs/nothing-like-it/run.yaml"], capsys)
    assert err.endswith("config file configs/nothing-like-it/run.yaml does not exist")


def test_an_override_error_names_the_command_line_not_the_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml"))
    err = _error(["train", path, "optim.lr_intt=1"], capsys)
    assert err == (
        "skein train: error: command-line override optim.lr_intt=1: optim.lr_intt: unknown key "
        "(did you mean 'lr_init'?)"
    )
    err = _error(["params", path, "--stages.0.micro_bsz", "four"], capsys)
    assert err.endswith(
        "command-line override stages.0.micro_bsz=four: stages[0].micro_bsz: expected an integer, got 'four'"
    )
    # a mistake in the file itself is still the file's
    cfg = tiny_run("c", tmp_path)
    cfg["optim"]["lr_intt"] = 1
    bad = str(write_config(cfg, tmp_path / "bad.yaml"))
    err = _error(["train", bad, "optim.lr_init=0.002"], capsys)
    assert err == f"skein train: error: {bad}: optim.lr_intt: unknown key (did you mean 'lr_init'?)"


def test_the_readme_tokenizer_line_says_where_the_file_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.jsonl").write_text('{"text": "def main(): pass"}\n')
    err = _error(
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
