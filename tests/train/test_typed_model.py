"""The run config's `model:` section is a tagged union of the architectures' config classes,
selected by `arch` and loaded like every other section: values coerced to their annotations,
wrong types, unknown keys and out-of-range values named by their full key."""

from __future__ import annotations

from pathlib import Path

import pytest

from skein.rwkv.models import MODELS, config_class
from skein.train.config import ConfigError, dump_config, load_config
from skein.train.typed import from_dict
from tests.train.helpers import tiny_run, write_config

SIZES = {
    "rwkv4": {"n_layer": 3, "d_model": 96},
    "rwkv7": {"n_layer": 3, "d_model": 96, "head_size": 32},
    "deltaproduct": {"n_layer": 3, "d_model": 96, "n_head": 3},
    "llama": {"n_layer": 3, "d_model": 96, "n_head": 3},
}


def _path(tmp_path: Path, arch: str = "llama", **model: object) -> Path:
    cfg = tiny_run("c", tmp_path, model={"arch": arch, "vocab_size": 311, **SIZES[arch], **model})
    return write_config(cfg, tmp_path / f"{arch}.yaml")


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_arch_selects_the_typed_config_and_round_trips(tmp_path: Path, arch: str) -> None:
    cfg = load_config(_path(tmp_path, arch), ["model.n_layer=5", "model.d_model=1.92e2"])
    assert type(cfg.model) is config_class(arch)
    assert cfg.model.n_layer == 5 and cfg.model.d_model == 192 and isinstance(cfg.model.d_model, int)
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again).model == cfg.model


def test_a_wrong_type_under_model_names_the_key(tmp_path: Path) -> None:
    path = _path(tmp_path, "deltaproduct")
    with pytest.raises(ConfigError, match=r"model.n_layer: expected an integer, got 'two'"):
        load_config(path, ["model.n_layer=two"])
    with pytest.raises(ConfigError, match=r"model.allow_neg_eigval: expected true or false, got 'maybe'"):
        load_config(path, ["model.allow_neg_eigval=maybe"])
    with pytest.raises(ConfigError, match=r"model.a_init_range: expected 2 values, got 3"):
        load_config(path, ["model.a_init_range=[0, 1, 2]"])
    cfg = load_config(path, ["model.expand_v=3", "model.a_init_range=[1, 8]"])
    assert cfg.model.expand_v == 3.0 and isinstance(cfg.model.expand_v, float)
    assert cfg.model.a_init_range == (1.0, 8.0)


def test_unknown_keys_arch_and_ranges_are_named(tmp_path: Path) -> None:
    path = _path(tmp_path, "rwkv7")
    with pytest.raises(ConfigError, match=r"model.head_sise: unknown key \(did you mean 'head_size'\?\)"):
        load_config(path, ["model.head_sise=64"])
    with pytest.raises(ConfigError, match=r"model.arch: 'rwkv8' is not one of \['deltaproduct', 'llama'"):
        load_config(path, ["model.arch=rwkv8"])
    with pytest.raises(ConfigError, match=r"model.d_model must be positive, got -96"):
        load_config(path, ["model.d_model=-96"])
    with pytest.raises(ConfigError, match=r"model.arch: missing"):
        from_dict(type(load_config(path)), {"model": {"n_layer": 2}})
    with pytest.raises(ConfigError, match=r"^model: missing$"):
        from_dict(type(load_config(path)), {})
