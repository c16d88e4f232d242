"""The `skein` command: the same override forms for every config command, --config and --version,
help without heavy imports, one-line errors (exit 2) for a user's mistake or a damaged file, load
checks that leave nothing behind, and `prepare --inputs` with one or several files."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skein.train.cli import main
from tests.train.helpers import cli_error, tiny_run, write_config


def _count(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    main(args)
    return capsys.readouterr().out.strip()


def test_every_config_command_takes_the_same_override_forms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml"))
    base = _count(["params", path], capsys)
    forms = [
        ["params", path, "model.n_layer=3"],
        ["params", path, "--model.n_layer", "3"],
        ["params", path, "--model.n_layer=3"],
        ["params", "--config", path, "model.n_layer=3"],
        ["params", "model.n_layer=3", "--config", path],
    ]
    counts = {_count(f, capsys) for f in forms}
    assert len(counts) == 1 and counts != {base}
    out = tmp_path / "lr.png"
    main(["plot-lr", "--config", path, "--optim.lr_init", "0.002", "--output", str(out)])
    assert out.read_bytes()[:4] == b"\x89PNG"
    main(["train", "--config", path, "--optim.lr_init", "0.002", "--print_config"])
    assert "lr_init: 0.002" in capsys.readouterr().out


def test_version_and_help_import_no_torch(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("skein ")
    code = (
        "import sys\nfrom skein.train.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['params', '--help'], ['prepare', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'numpy') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "--print_config" in res.stdout and "--inputs" in res.stdout
    assert "HEAVY []" in res.stdout, res.stdout[-500:]


def test_print_config_shows_derived_numbers_that_are_not_read_back(
    corpus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stages = [
        {"ctx_len": 32, "tokens": 10_000, "micro_bsz": 4},
        {"ctx_len": 64, "tokens": 20_000, "micro_bsz": 2, "tokens_per_step": 512},
    ]
    path = write_config(tiny_run(corpus, tmp_path / "run", stages=stages), tmp_path / "c.yaml")
    main(["train", str(path), "--print_config"])
    out = capsys.readouterr().out
    assert "stages[0]: 79 steps of 128 tokens" in out and "changes with the world size" in out
    assert "stages[1]: 40 steps of 512 tokens" in out and "accumulation 4" in out
    assert "magic prime: " in out and "tokens)" in out
    reread = tmp_path / "printed.yaml"
    reread.write_text(out)
    main(["train", str(reread), "--print_config"])
    assert capsys.readouterr().out == out
    assert "derived" not in yaml.safe_load(out)


def test_missing_shard_fails_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    path = write_config(tiny_run(str(tmp_path / "nope"), run, log={"wandb": "offline"}), tmp_path / "c.yaml")
    err = cli_error(["train", str(path)], capsys)
    assert err.startswith("skein train: error: data.train[0]=") and "skein prepare" in err
    assert not run.exists()


def test_bad_stage_lr_is_refused_at_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml")
    err = cli_error(["train", str(path), "stages.0.lr_init=-3e-3", "--print_config"], capsys)
    assert err == (
        "skein train: error: command-line override stages.0.lr_init=-3e-3: stages[0].lr_init=-0.003 must lie "
        "in (0, 1), e.g. 3e-4"
    )
    err = cli_error(["params", str(path), "stages.0.lr_final=0.5"], capsys)
    assert "stages[0]: lr_final=0.5 exceeds lr_init=0.003" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a CPU-only machine")
def test_a_config_that_cannot_run_here_says_everything_at_once(
    corpus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = {"accelerator": "gpu", "strategy": "deepspeed", "precision": "bf16-mixed", "devices": 1}
    run = tmp_path / "run"
    path = write_config(tiny_run(corpus, run, trainer=trainer), tmp_path / "c.yaml")
    err = cli_error(["train", str(path)], capsys)
    assert "change 3 things" in err
    for key in ("trainer.accelerator=auto", "trainer.strategy=auto", "trainer.precision=auto"):
        assert key in err
    assert not run.exists()


@pytest.mark.slow
def test_finished_run_damaged_files_and_the_closing_sentence(
    corpus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write_config(tiny_run(corpus, tmp_path / "run"), tmp_path / "c.yaml"))
    main(["train", path])
    out = capsys.readouterr().out
    assert "Finished 1 stage(s): 12 steps" in out and "Final checkpoint" in out
    ckpt = Path((tmp_path / "run" / "checkpoints" / "latest").read_text().strip())
    ckpt = tmp_path / "run" / "checkpoints" / ckpt.name
    main(["train", path])
    out = capsys.readouterr().out
    assert "is already finished" in out and f"--init_from {ckpt}" in out and "{" not in out

    # a damaged newest checkpoint is refused, named, and the run resumes from the one before it
    (ckpt / "meta.json").write_text('{"stage_index": 0, "step": ')
    main(["train", path])
    captured = capsys.readouterr()
    assert "refused checkpoint" in captured.err and "meta.json" in captured.err
    assert "Finished 1 stage(s): 12 steps" in captured.out

    # when no checkpoint can be trusted: one line naming the file, exit 2; --debug shows the error
    ckpts = [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.is_dir() and p.suffix != ".refused"]
    assert ckpts
    for c in ckpts:
        weights = c / "model.ckpt"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 3])
    err = cli_error(["train", path], capsys)
    assert "model.ckpt" in err and ("damaged" in err or "checksum" in err)
    with pytest.raises((RuntimeError, ValueError)) as raised:
        main(["--debug", "train", path])
    assert not isinstance(raised.value, SystemExit)


def test_unknown_failures_keep_their_traceback() -> None:
    from skein.train.errors import explain

    assert explain(KeyError("x")) is None
    assert explain(RuntimeError("CUDA error: an illegal memory access")) is None
    assert explain(FileNotFoundError(2, "No such file or directory", "/x/y.bin")) == (
        "/x/y.bin: No such file or directory"
    )


def _jsonl(path: Path, n: int, rng: random.Random) -> Path:
    words = ["skein", "state", "token", "river", "delta", "goose", "prime", "stage"]
    with open(path, "w") as f:
        for _ in range(n):
            f.write(
                json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))}) + "\n"
            )
    return path


def test_prepare_takes_one_or_several_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(3)
    a, b = _jsonl(tmp_path / "a.jsonl", 7, rng), _jsonl(tmp_path / "b.jsonl", 4, rng)
    common = ["--tokenizer", "byte", "--progress", "false"]
    main(["prepare", "--inputs", str(a), "--output", str(tmp_path / "one"), *common])
    main(["prepare", "--inputs", str(a), str(b), "--output", str(tmp_path / "two"), *common])
    main(["prepare", "--inputs+", str(b), "--output", str(tmp_path / "old"), *common])
    docs = {
        name: json.loads((tmp_path / f"{name}.meta.json").read_text())["documents"]
        for name in ("one", "two", "old")
    }
    assert docs == {"one": 7, "two": 11, "old": 4}


def test_import_writes_a_ready_finetune_recipe(
    corpus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.export.helpers import save_skein_safetensors, tiny_model

    model = tiny_model("rwkv7")
    source = save_skein_safetensors(model, tmp_path / "model.safetensors")
    weights = tmp_path / "imported" / "w.pth"
    main(["import", str(source), str(weights), "--tokenizer", "byte"])
    recipe = weights.with_suffix(".yaml")
    assert f"--init_from {weights}" in recipe.read_text()
    overrides = [
        f"data.train=[{corpus}]",
        "stages.0.tokens=5e5",
        "stages.0.ctx_len=64",
        "stages.0.micro_bsz=2",
    ]
    main(["train", str(recipe), *overrides, "--init_from", str(weights), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == {**model.config.to_dict(), "arch": "rwkv7"}
    assert printed["stages"][0]["tokens"] == 500_000 and printed["data"]["tokenizer"] == "byte"
    err = cli_error(["train", str(recipe)], capsys)  # the recipe names no data yet, and says so
    assert "data.train: no binidx prefixes given" in err


@pytest.mark.slow
def test_quiet_by_default_verbose_on_request(corpus: str, tmp_path: Path) -> None:
    from tests.train.helpers import run_cli

    stages = [{"ctx_len": 32, "tokens": 32 * 8 * 4, "micro_bsz": 4, "tokens_per_step": 32 * 8}]
    quiet = write_config(tiny_run(corpus, tmp_path / "quiet", stages=stages), tmp_path / "q.yaml")
    loud = write_config(tiny_run(corpus, tmp_path / "loud", stages=stages), tmp_path / "l.yaml")
    res = run_cli(["train", str(quiet)])
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "quiet" / "checkpoints" / "latest").exists()
    out = res.stdout + res.stderr
    assert out.strip().startswith("Finished 1 stage(s): 4 steps") and len(out.strip().splitlines()) == 1, out
    res = run_cli(["--verbose", "train", str(loud)])
    assert res.returncode == 0 and "GPU available" in res.stdout + res.stderr


def _loadcli_error(path: Path) -> BaseException:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - the failure under test
        return e
    raise AssertionError(f"{path} loaded")


def test_damaged_weight_files_are_named_in_one_line(tmp_path: Path) -> None:
    import torch

    from skein.train.errors import explain

    sd = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    zipped, legacy, noise = tmp_path / "zipped.pt", tmp_path / "legacy.pt", tmp_path / "noise.pt"
    torch.save(sd, zipped)
    zipped.write_bytes(zipped.read_bytes()[:3000])
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:200])
    noise.write_bytes(random.Random(5).randbytes(4096))
    for path in (zipped, legacy, noise):
        message = explain(_loadcli_error(path))
        assert message is not None and message.startswith(f"{path}: damaged or truncated"), message
        assert "\n" not in message
