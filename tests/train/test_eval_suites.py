"""`skein eval` end to end through the CLI, on tiny models: the loss suite reproduces the training
run's own validation loss, the length suite's chunked losses equal a single full-length pass, and
the synthetic suites write their results."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from skein.data.dataset import PretrainDataset
from skein.data.prepare import prepare
from skein.train.checkpoints.checkpoint import latest_checkpoint
from skein.train.cli import main
from skein.train.commands.export import load_source
from skein.train.config import load_config
from skein.train.loop.run import train_from_config
from tests.train.helpers import tiny_run, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny RWKV-7 run with validation every 4 steps: (run dir, held-out prefix)."""
    tmp = tmp_path_factory.mktemp("eval_run")
    corpus = tmp / "stdlib"
    prepare(output=str(corpus), tokenizer="byte", stdlib_max_bytes=300_000, val_fraction=0.25, progress=False)
    val = str(corpus) + "_val"
    ev = {"every_steps": 4, "val": [val], "val_samples": 10, "micro_bsz": 4}
    cfg = tiny_run(str(corpus), tmp / "run", arch="rwkv7", eval=ev)
    train_from_config(load_config(write_config(cfg, tmp / "c.yaml")))
    return tmp / "run", val


def _eval(*args: str) -> dict:
    main(["eval", *args, "--device", "cpu"])
    out = Path(args[args.index("--output") + 1])
    return json.loads((out / "results.json").read_text())


def test_loss_suite_equals_the_runs_validation_loss(trained: tuple[Path, str], tmp_path: Path) -> None:
    run, val = trained
    with open(run / "eval.csv") as f:
        last = [float(r["value"]) for r in csv.DictReader(f)][-1]
    r = _eval("loss", str(run), "--data", val, "--samples", "10", "--micro_bsz", "4",
              "--output", str(tmp_path / "loss"))  # fmt: skip
    assert r["ctx_len"] == 32 and r["tokens"] == 320
    assert r["loss"] == pytest.approx(last, rel=1e-6)
    assert r["perplexity"] == pytest.approx(math.exp(last), rel=1e-6)
    # byte tokenizer: one byte per token except the end-of-document id
    ds = PretrainDataset([val], None, 32, seed=0)
    n_bytes = sum(int((ds[n][1] != 256).sum()) for n in range(10))
    assert r["bytes"] == n_bytes and 0.9 < n_bytes / 320 <= 1
    assert r["bits_per_byte"] == pytest.approx(last * 320 / math.log(2) / n_bytes, rel=1e-9)


def test_length_suite_chunked_equals_one_pass(trained: tuple[Path, str], tmp_path: Path) -> None:
    run, val = trained
    first_ckpt = sorted((run / "checkpoints").glob("s0-*"))[0]
    assert first_ckpt != latest_checkpoint(run)[0]
    out = tmp_path / "length"
    r = _eval("length", "--models+", str(run), "--models+", str(first_ckpt), "--data", val,
              "--factor", "3", "--samples", "3", "--chunk_len", "20", "--output", str(out),
              "--progress", "false")  # fmt: skip
    assert r["length"] == 96 and len(r["mean_loss_by_window"]) == 2
    with open(out / "loss_by_position.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 96
    by_model = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(float(row["loss"]))
    model = load_source(str(run)).model.eval()
    ds = PretrainDataset([val], None, 96, seed=0)
    x = torch.stack([ds[n][0] for n in range(3)])
    y = torch.stack([ds[n][1] for n in range(3)])
    with torch.no_grad():
        full = F.cross_entropy(model(x)[0].transpose(1, 2), y, reduction="none").mean(0)
    assert torch.allclose(
        torch.tensor(by_model["run"], dtype=torch.float64), full.double(), rtol=1e-4, atol=1e-5
    )
    assert by_model["run"] != by_model[first_ckpt.name]
    assert (out / "loss_by_position.png").stat().st_size > 1000


@pytest.mark.slow
def test_mqar_suite_learns_recall(tmp_path: Path) -> None:
    out = tmp_path / "mqar"
    r = _eval("mqar", "--quick", "true", "--mixers+", "rwkv7", "--lrs", "0.003", "--output", str(out),
              "--progress", "false")  # fmt: skip
    (summary,) = r["summary"]
    assert summary["mixer"] == "rwkv7" and summary["state_size"] == 32 * 32  # one 32-wide head
    assert summary["mean_accuracy"] > 0.9  # chance is 1 / 32 values
    with open(out / "cells.csv") as f:
        (cell,) = list(csv.DictReader(f))
    assert (int(cell["seq_len"]), int(cell["kv_pairs"])) == (32, 4)
    assert (out / "accuracy_vs_state.png").is_file()


def test_state_suite_writes_accuracy_by_position(tmp_path: Path) -> None:
    out = tmp_path / "state"
    r = _eval("state", "--quick", "true", "--groups+", "S3", "--groups+", "A5", "--epochs", "1",
              "--output", str(out), "--progress", "false")  # fmt: skip
    assert {g: v["order"] for g, v in r["groups"].items()} == {"S3": 6, "A5": 60}
    with open(out / "accuracy_by_position.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 64 and all(0 <= float(row["accuracy"]) <= 1 for row in rows)
    # position 1 is the input itself: learnable in one epoch, unlike the running product
    assert float(rows[0]["accuracy"]) > 0.5


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", "mqar", "--settings+", "40:16", "--output", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("skein eval mqar: error:") and "40:16" in err
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["eval", "state", "--quick", "true", "--output", str(tmp_path / "done")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "is not empty" in err
    assert (tmp_path / "done" / "results.json").read_text() == "{}"


def test_results_go_under_the_run_and_the_path_is_printed(
    trained: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run, val = trained
    monkeypatch.chdir(tmp_path)
    ckpt = latest_checkpoint(run)[0]
    for expected in ("loss", "loss-2"):  # a second evaluation never touches the first one's results
        main(["eval", "loss", str(ckpt), "--data", val, "--samples", "2", "--device", "cpu"])
        assert capsys.readouterr().out.strip().splitlines()[-1] == f"results: {run / 'eval' / expected}"
        assert (run / "eval" / expected / "results.json").is_file()
    main(["eval", "state", "--quick", "true", "--groups+", "S3", "--epochs", "1", "--num_train", "64",
          "--device", "cpu", "--progress", "false"])  # fmt: skip
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"results: {Path('runs/eval/state')}"
    assert (tmp_path / "runs" / "eval" / "state" / "results.json").is_file()
    assert not (tmp_path / "eval").exists()
