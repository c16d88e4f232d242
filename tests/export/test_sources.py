"""Every source `skein export` reads gives the same model: a real (tiny, 2-step CPU) run
directory, its checkpoint directory, the Lightning .ckpt inside, and its RWKV-LM snapshot; and
the exports made from it load back with identical logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skein.data.prepare import prepare
from skein.rwkv import build_model
from skein.train.commands.export import export, load_source
from skein.train.commands.generate import generate
from skein.train.config import RunConfig, from_dict
from skein.train.loop.run import train_from_config
from tests.export.helpers import logits
from tests.models.harness import random_tokens


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export_run")
    prepare(output=str(root / "corpus"), tokenizer="byte", stdlib_max_bytes=40_000, progress=False)
    cfg = {
        "run": {"name": "export-test", "out_dir": str(root / "run"), "seed": 0},
        "model": {"arch": "rwkv4", "vocab_size": 257, "n_layer": 2, "d_model": 32},
        "data": {"train": [str(root / "corpus")], "tokenizer": "byte"},
        "optim": {"lr_init": 1e-2, "lr_final": 1e-3},
        "stages": [{"ctx_len": 16, "tokens": 16 * 4 * 2, "micro_bsz": 4}],
        "trainer": {"accelerator": "cpu"},
        "checkpoint": {"every_steps": 1, "keep_last": 1, "snapshot_every_steps": 2, "snapshot_dtype": "fp32"},
        "log": {"every_steps": 1, "wandb": "disabled", "progress_bar": False},
    }
    summary = train_from_config(from_dict(RunConfig, cfg))
    assert summary["stages_done"] == 1
    return root / "run"


def test_all_sources_of_a_run_agree(run_dir: Path) -> None:
    ckpt_dir = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    snapshots = sorted((run_dir / "snapshots").glob("*.pth"))
    assert snapshots, "the run wrote no snapshot"
    sources = [run_dir, ckpt_dir, ckpt_dir / "model.ckpt", snapshots[-1]]
    loaded = [load_source(str(s)) for s in sources]
    idx = random_tokens(257, B=1, T=24, seed=11)
    ref = logits(loaded[0].model, idx)
    assert loaded[0].path == str(ckpt_dir / "model.ckpt")
    for src in loaded:
        assert src.model.config.arch == "rwkv4" and src.tokenizer_spec() == "byte"
        assert torch.equal(logits(src.model, idx), ref), src.path
    untrained = build_model(loaded[0].model.config).eval()
    assert not torch.equal(logits(untrained, idx), ref), "the checkpoint holds the initial weights"


def test_exports_of_a_run_load_back(run_dir: Path, tmp_path: Path) -> None:
    idx = random_tokens(257, B=1, T=24, seed=12)
    ref = logits(load_source(str(run_dir)).model, idx)
    for fmt, name in (("rwkv_lm", "model.pth"), ("safetensors", "model.safetensors"), ("hf", "hf")):
        out = export(str(run_dir), str(tmp_path / name), format=fmt)
        assert torch.equal(logits(load_source(out).model, idx), ref), fmt
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.old"))


def test_run_directory_without_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("model: {arch: rwkv4}\n")
    with pytest.raises(ValueError, match="without a complete checkpoint"):
        load_source(str(tmp_path))
    (tmp_path / "checkpoints").rmdir()
    with pytest.raises(ValueError, match="not a run directory"):
        load_source(str(tmp_path))


def test_generate_takes_the_tokenizer_from_the_run(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    text = generate(str(run_dir), "import os", max_tokens=6, seed=0)
    assert capsys.readouterr().out.startswith("import os" + text)
