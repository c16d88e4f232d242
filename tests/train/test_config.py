"""Run configs: every shipped recipe loads; bad keys, types and overrides fail with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from skein.train.cli import main
from skein.train.config import ConfigError, load_config
from skein.train.loop.trainer import build_training_model
from skein.train.parallel.execution import resolve_compile
from tests.train.helpers import run_configs, tiny_run, write_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = run_configs()


def test_recipes_exist() -> None:
    assert RECIPES, "configs/ holds no recipes"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_recipe_loads(path: Path) -> None:
    cfg = load_config(path)
    if path.parent.name in ("rwkv4", "rwkv7", "deltaproduct", "llama"):
        assert cfg.model.arch == path.parent.name
    for stage in cfg.stages:
        assert stage.tokens >= stage.ctx_len


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    cfg = tiny_run("c", tmp_path, optim={"lr_int": 1e-3})
    with pytest.raises(ConfigError, match=r"optim.lr_int: unknown key \(did you mean 'lr_init'\?\)"):
        load_config(write_config(cfg, tmp_path / "c.yaml"))


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"stages\[0\].micro_bsz: expected an integer, got 'four'"):
        load_config(path, ["stages.0.micro_bsz=four"])
    with pytest.raises(ConfigError, match=r"trainer.strategy: 'fsdp' is not one of"):
        load_config(path, ["trainer.strategy=fsdp"])
    with pytest.raises(ConfigError, match=r"model.n_heads: unknown key \(did you mean 'n_head'\?\)"):
        load_config(path, ["model.n_heads=4"])
    with pytest.raises(ConfigError, match="lr_final <= lr_init"):
        load_config(path, ["optim.lr_final=1.0"])


def test_rwkv_lm_order_and_schedule_keys_are_validated(tmp_path: Path) -> None:
    path = write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml")
    cfg = load_config(
        path, ["data.sample_offset=1", "data.pass_order=repeat", "schedule.kind=rwkv_lm_cosine"]
    )
    assert (cfg.data.sample_offset, cfg.data.pass_order, cfg.schedule.kind) == (1, "repeat", "rwkv_lm_cosine")
    with pytest.raises(ConfigError, match=r"data.sample_offset must be >= 0, got -1"):
        load_config(path, ["data.sample_offset=-1"])
    with pytest.raises(ConfigError, match=r"data.pass_order: 'shuffle' is not one of"):
        load_config(path, ["data.pass_order=shuffle"])
    with pytest.raises(ConfigError, match=r"schedule.kind: 'rwkv_cosine' is not one of"):
        load_config(path, ["schedule.kind=rwkv_cosine"])


def test_overrides_apply_by_dotted_key_and_index(tmp_path: Path) -> None:
    path = write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml")
    cfg = load_config(
        path, ["optim.lr_init=0.01", "stages.0.ctx_len=64", "model.n_layer=3", "optim.betas=[0.9, 0.95]"]
    )
    assert cfg.optim.lr_init == 0.01 and cfg.stages[0].ctx_len == 64 and cfg.model.n_layer == 3
    assert cfg.optim.betas == (0.9, 0.95)
    # YAML 1.1 reads exponents without a dot as strings; they are numbers here
    cfg = load_config(path, ["optim.lr_init=6e-4", "stages.0.tokens=5e9"])
    assert cfg.optim.lr_init == 6e-4 and cfg.stages[0].tokens == 5_000_000_000
    with pytest.raises(ConfigError, match="expected an integer, got 2.5"):
        load_config(path, ["stages.0.micro_bsz=2.5"])
    with pytest.raises(ConfigError, match="not a valid list index"):
        load_config(path, ["stages.3.ctx_len=64"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["optim.lr_init"])


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_cli_print_config_and_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml")
    main(["train", str(path), "optim.lr_init=0.002", "--print_config"])
    out = capsys.readouterr().out
    assert "lr_init: 0.002" in out and "arch: llama" in out
    main(["params", str(path)])
    out = capsys.readouterr().out
    assert "llama:" in out and "parameters" in out


def test_cli_takes_lightning_style_overrides_and_a_bare_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml")
    args = ["train", str(path), "--optim.lr_init", "0.004", "--stages.0.micro_bsz=2", "log.every_steps=7"]
    main([*args, "--resume", "--print_config"])
    out = capsys.readouterr().out
    assert "lr_init: 0.004" in out and "micro_bsz: 2" in out and "every_steps: 7" in out
    main([*args, "--resume", "false", "--print_config"])
    assert "lr_init: 0.004" in capsys.readouterr().out
    from skein.train.cli import train_arguments

    assert train_arguments([str(path), "--resume"])["resume"] is True
    assert train_arguments([str(path), "--resume", "false"])["resume"] is False
    assert "resume" not in train_arguments([str(path)])  # train()'s own default (true) applies
    assert train_arguments(["--resume", str(path), "a.b=1"]) == {
        "config": str(path),
        "resume": True,
        "overrides": ["a.b=1"],
    }
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--optim.lr_init"])
    assert exit_info.value.code == 2
    assert "--optim.lr_init needs a value" in capsys.readouterr().err


def test_cli_reports_config_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tiny_run("c", tmp_path), tmp_path / "c.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "optim.lr_int=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("skein train: error: ") and "optim.lr_int: unknown key" in err
    assert len(err.strip().splitlines()) == 1


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from skein.train.cli import COMMANDS

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"    {name} " in out, name


@pytest.mark.parametrize("old,new", [("torch", "parallel"), ("recurrent", "naive")])
def test_former_kernel_names_say_the_new_name(tmp_path: Path, old: str, new: str) -> None:
    cfg = tiny_run(
        "c",
        tmp_path,
        model={"arch": "llama", "vocab_size": 257, "n_layer": 1, "d_model": 32, "n_head": 2, "kernel": old},
    )
    with pytest.raises(ConfigError, match=f"model.kernel='{old}' is now called '{new}'"):
        load_config(write_config(cfg, tmp_path / "run.yaml"))


def test_cuda_kernel_name_is_refused(tmp_path: Path) -> None:
    cfg = tiny_run(
        "c",
        tmp_path,
        model={"arch": "rwkv7", "vocab_size": 257, "n_layer": 1, "d_model": 64, "kernel": "cuda"},
    )
    with pytest.raises(ConfigError, match="model.kernel must be one of"):
        load_config(write_config(cfg, tmp_path / "run.yaml"))


def test_trainer_compile_and_fused_loss_keys(tmp_path: Path) -> None:
    path = write_config(tiny_run("c", tmp_path), tmp_path / "run.yaml")
    cfg = load_config(path)
    assert cfg.trainer.compile == "auto"
    assert resolve_compile(cfg.trainer) is False  # this test's config trains on the CPU
    cfg = load_config(path, ["trainer.compile=true", "trainer.fused_loss=false"])
    assert cfg.trainer.compile is True and cfg.trainer.fused_loss is False
    assert resolve_compile(cfg.trainer) is True
    with pytest.raises(ConfigError, match="trainer.compile"):
        load_config(path, ["trainer.compile=sometimes"])
    with pytest.raises(ConfigError, match="loss_chunk_tokens"):
        load_config(path, ["trainer.loss_chunk_tokens=0"])


def test_grad_checkpointing_key_reaches_every_block(tmp_path: Path) -> None:
    """trainer.grad_checkpointing: false, true or selective, as the trainer builds the model."""
    path = write_config(tiny_run("g", tmp_path), tmp_path / "run.yaml")
    for value, want in (("false", None), ("true", True), ("selective", "selective")):
        model = build_training_model(load_config(path, [f"trainer.grad_checkpointing={value}"]))
        assert [getattr(b, "_skein_checkpointed", None) for b in model.blocks] == [want] * len(model.blocks)
    with pytest.raises(ConfigError, match="trainer.grad_checkpointing: expected selective or true or false"):
        load_config(path, ["trainer.grad_checkpointing=sometimes"])


def test_a_numeric_choice_reads_from_yaml_and_overrides(tmp_path: Path) -> None:
    """`precision: 32` is a YAML number; the choice is the string "32"."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"precision": 32}, "model": {"arch": "llama"}}))
    assert load_config(path).trainer.precision == "32"
    assert load_config(path, ["trainer.precision=32"]).trainer.precision == "32"
    with pytest.raises(ConfigError, match="trainer.precision: 64 is not one of"):
        load_config(path, ["trainer.precision=64"])
