"""scripts/side_by_side_rwkv_lm.py's CPU parts: parameter parity of the demo recipe with RWKV-LM's
x070 layout and with an rwkv-init.pth-like file (which skein then starts from), the RWKV-LM flags
and skein configs it writes, and its speed and loss tables."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from skein.train.checkpoints.weights import load_source
from skein.train.config import load_config
from skein.train.loop.trainer import build_training_model
from skein.train.plan import StagePlan

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "side_by_side_rwkv_lm", ROOT / "scripts" / "side_by_side_rwkv_lm.py"
)
sbs = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(sbs)

DEMO_PARAMS = 191_084_544
"""RWKV-LM's L12-D768 x070 demo model, vocab 65536 (its printed 'model params')."""
UNUSED_PARAMS = 49_920
"""blocks.0.att.v0 [1, 1, 768], v1 [768, 32], v2 [32, 768]."""


def _config(tmp_path: Path, name: str, cfg: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _recipe_config(tmp_path: Path, steps: int = 366, trainer: dict | None = None, **model) -> Path:
    recipe = sbs.load_recipe()
    recipe["model"].update(model)
    cfg = sbs.skein_config(recipe, str(tmp_path / "shard"), steps, tmp_path / "run", trainer or {})
    return _config(tmp_path, "recipe", cfg)


def test_rwkv_lm_layout_of_the_demo_model() -> None:
    shapes = sbs.rwkv_lm_x070_shapes(12, 768, 65536, 64)
    assert sum(math.prod(s) for s in shapes.values()) == DEMO_PARAMS
    assert sum(math.prod(shapes[k]) for k in sbs.UNUSED_BLOCK0) == UNUSED_PARAMS
    assert shapes["blocks.7.ffn.key.weight"] == (3072, 768) and shapes["blocks.7.ffn.value.weight"] == (
        768,
        3072,
    )
    assert shapes["blocks.0.att.w1"] == (768, 64) and shapes["blocks.0.att.a2"] == (64, 768)
    assert shapes["blocks.3.att.v1"] == (768, 32) and shapes["blocks.11.att.g1"] == (768, 128)
    assert shapes["blocks.5.att.r_k"] == (12, 64) and shapes["blocks.2.att.x_g"] == (1, 1, 768)
    assert "blocks.0.ln0.weight" in shapes and "blocks.1.ln0.weight" not in shapes
    assert len(shapes) == 1 + 12 * 33 + 2 + 3  # emb; 33 per block; block 0's ln0; ln_out, head


def test_the_recipe_model_has_parity_with_rwkv_lm(tmp_path: Path) -> None:
    ours = sbs.skein_shapes(_recipe_config(tmp_path))
    text = sbs.check_parity(ours, sbs.rwkv_lm_x070_shapes(12, 768, 65536, 64), "RWKV-LM's layout")
    assert "skein 191,034,624 = RWKV-LM 191,084,544 - 49,920" in text
    assert sum(math.prod(s) for s in ours.values()) == DEMO_PARAMS - UNUSED_PARAMS


def test_parity_refuses_every_other_difference(tmp_path: Path) -> None:
    theirs = sbs.rwkv_lm_x070_shapes(12, 768, 65536, 64)
    old = sbs.skein_shapes(_recipe_config(tmp_path, d_ffn=2688))  # RWKV-LM's unused --dim_ffn default
    with pytest.raises(
        sbs.ParityError, match=r"blocks.0.ffn.key.weight: skein \(2688, 768\), RWKV-LM \(3072, 768\)"
    ):
        sbs.check_parity(old, theirs, "RWKV-LM's layout")
    ours = sbs.skein_shapes(_recipe_config(tmp_path))
    without_g2 = {k: v for k, v in theirs.items() if k != "blocks.5.att.g2"}
    with pytest.raises(sbs.ParityError, match=r"blocks.5.att.g2 \(128, 768\) only in skein"):
        sbs.check_parity(ours, without_g2, "x")
    with pytest.raises(sbs.ParityError, match=r"blocks.1.att.extra \(4,\) only in RWKV-LM"):
        sbs.check_parity(ours, {**theirs, "blocks.1.att.extra": (4,)}, "x")
    with pytest.raises(sbs.ParityError, match="24 difference.*skein 183,956,736 parameters.*and 16 more"):
        sbs.check_parity(old, theirs, "x")  # both ffn matrices of 12 blocks, 8 of them named
    # block 0's v0/v1/v2 are optional on RWKV-LM's side, never on skein's
    bare = {k: v for k, v in theirs.items() if k not in sbs.UNUSED_BLOCK0}
    assert "- 0 (blocks.0" in sbs.check_parity(ours, bare, "x")
    with pytest.raises(sbs.ParityError, match=r"blocks.0.att.v1 \(768, 32\) only in skein"):
        sbs.check_parity({**ours, "blocks.0.att.v1": (768, 32)}, bare, "x")


def test_parity_with_an_rwkv_init_file_and_skein_starts_from_its_weights(tmp_path: Path) -> None:
    """A file laid out as RWKV-LM's prepare step writes it (bf16, block 0's v0/v1/v2 included) at a
    small width: parity holds against skein's model of the same dims, and skein's --init_from path
    loads exactly its weights; skein's default LoRA widths at d_model 128 are not RWKV-LM's (g1 64)."""
    n_layer, C, vocab = 2, 256, 1000
    gen = torch.Generator().manual_seed(3)
    sd = {
        k: (torch.randn(s, generator=gen) * 0.1).to(torch.bfloat16)
        for k, s in sbs.rwkv_lm_x070_shapes(n_layer, C, vocab, 64).items()
    }
    init = tmp_path / "proj" / "rwkv-init.pth"
    init.parent.mkdir()
    torch.save(sd, init)
    cfg = {
        "run": {"out_dir": str(tmp_path / "run")},
        "model": {"arch": "rwkv7", "n_layer": n_layer, "d_model": C, "head_size": 64, "vocab_size": vocab},
        "trainer": {"accelerator": "cpu"},
    }
    config = _config(tmp_path, "small", cfg)
    text = sbs.check_parity(sbs.skein_shapes(config), sbs.rwkv_lm_file_shapes(init), str(init))
    assert f"- {C + 2 * 32 * C:,} (blocks.0.att.v0/v1/v2" in text
    model = build_training_model(load_config(config), (load_source(str(init)).model.state_dict(), str(init)))
    got = model.state_dict()
    assert sorted(got) == sorted(set(sd) - set(sbs.UNUSED_BLOCK0))
    for k, v in got.items():
        assert torch.equal(v, sd[k].float()), k
    narrow = _config(tmp_path, "narrow", {**cfg, "model": {**cfg["model"], "d_model": 128}})
    with pytest.raises(sbs.ParityError, match=r"blocks.0.att.g1: skein \(128, 32\), RWKV-LM \(128, 64\)"):
        sbs.check_parity(sbs.skein_shapes(narrow), sbs.rwkv_lm_x070_shapes(n_layer, 128, vocab, 64), "x")


def _as_dict(flags: list[str]) -> dict[str, str]:
    assert all(k.startswith("--") for k in flags[::2])
    return {k[2:]: v for k, v in zip(flags[::2], flags[1::2])}


def test_rwkv_lm_flags_are_its_demo_scripts(tmp_path: Path) -> None:
    """The recipe mapped to RWKV-LM's flags gives demo-training-run.sh's and
    demo-training-prepare.sh's values (RWKV-v7/train_temp at commit 524481d)."""
    recipe = sbs.load_recipe()
    run = _as_dict(sbs.rwkv_lm_args(recipe, "SHARD", 366, 6247, tmp_path / "proj", "@rwkv3"))
    demo_run = {
        "load_model": "0", "my_testing": "x070", "ctx_len": "512", "train_stage": "3", "epoch_begin": "0",
        "micro_bsz": "16", "n_layer": "12", "n_embd": "768", "kernel": "@rwkv3", "warmup_steps": "10",
        "beta1": "0.9", "beta2": "0.99", "data_type": "binidx", "vocab_size": "65536", "epoch_save": "10",
        "head_size": "64", "head_chunk": "0", "accelerator": "gpu", "devices": "1", "precision": "bf16",
        "strategy": "deepspeed_stage_2", "grad_cp": "1", "num_nodes": "1",
    }  # fmt: skip
    assert {k: run[k] for k in demo_run} == demo_run
    floats = {"lr_init": 6e-4, "lr_final": 6e-5, "adam_eps": 1e-18, "weight_decay": 0.001, "grad_clip": 1.0}
    assert {k: float(run[k]) for k in floats} == floats
    assert (
        run["my_exit_tokens"] == str(366 * 8192)
        and run["magic_prime"] == "6247"
        and run["data_file"] == "SHARD"
    )
    prep = _as_dict(sbs.rwkv_lm_prepare_args(recipe, "SHARD", 3_200_123, 6247, tmp_path / "proj", "@rwkv3"))
    demo_prepare = {
        "train_stage": "1", "epoch_count": "1", "epoch_begin": "0", "epoch_save": "1", "weight_decay": "0",
        "head_size": "64", "num_nodes": "1", "micro_bsz": "1", "n_layer": "12", "n_embd": "768",
        "warmup_steps": "10", "beta1": "0.9", "beta2": "0.99", "accelerator": "cpu", "devices": "1",
        "precision": "bf16", "strategy": "deepspeed_stage_2", "grad_cp": "1", "vocab_size": "65536",
        "my_testing": "x070", "ctx_len": "512", "data_type": "binidx",
    }  # fmt: skip
    assert {k: prep[k] for k in demo_prepare} == demo_prepare
    assert float(prep["lr_init"]) == float(prep["lr_final"]) == 1e-5 and float(prep["adam_eps"]) == 1e-8
    assert prep["my_exit_tokens"] == "3200123" and "load_model" not in prep


@pytest.mark.parametrize("kind", ["skein", "skein_zero2"])
def test_skein_runs_follow_rwkv_lm_order_and_schedule(tmp_path: Path, kind: str) -> None:
    cfg = load_config(_recipe_config(tmp_path, 366, {"compile": False, **sbs.SKEIN_STRATEGIES[kind]}))
    assert cfg.data.train == [str(tmp_path / "shard")] and cfg.data.tokenizer is None
    assert cfg.data.sample_offset == 1 and cfg.data.pass_order == "repeat"
    assert cfg.schedule.kind == "rwkv_lm_cosine" and cfg.schedule.warmup_tokens == 10 * 8192
    assert cfg.stages[0].tokens == 366 * 8192 and StagePlan(cfg.stages[0], world_size=1).steps == 366
    assert cfg.model.d_ffn == 3072 and cfg.trainer.compile is False and cfg.log.every_steps == 1
    want = ("deepspeed", 2) if kind == "skein_zero2" else ("auto", 2)
    assert (cfg.trainer.strategy, cfg.trainer.zero_stage) == want


def test_speed_and_loss_tables() -> None:
    rng = random.Random(5)
    steps = 366

    def times(step: float, warm: float) -> list[float]:
        t, out = 0.0, []
        for s in range(steps):
            t += (warm if s < 20 else step) * rng.uniform(0.95, 1.05)
            out.append(t)
        return out

    ref = [10.8 * math.exp(-s / 60) + 2.7 + rng.gauss(0, 0.05) for s in range(steps)]
    near = [x + rng.uniform(-0.004, 0.004) for x in ref]
    spike = [x + (0.02 if s == 3 else 0.0) for s, x in enumerate(near)]
    drift = [x + (0.015 if 100 <= s < 200 else 0.0) for s, x in enumerate(near)]
    runs = [
        sbs.Run("RWKV-LM #1", ref, times(0.20, 3.0)),
        sbs.Run("skein", near, times(0.09, 5.0)),
        sbs.Run("skein ZeRO-2", spike, times(0.12, 6.0)),
        sbs.Run("RWKV-LM #2", drift, times(0.25, 3.0)),
    ]
    r = runs[1]
    want = sorted(b - a for a, b in zip(r.times[19:], r.times[20:]))[
        (steps - 20) // 2 - 1 : (steps - 20) // 2 + 1
    ]
    assert sbs.median_step(r.times, 21) == pytest.approx(sum(want) / 2)
    assert 0.085 < sbs.median_step(r.times, 21) < 0.095
    lines = sbs.speed_table(runs, 21)
    assert lines[0] == "| run | s/step (median, steps 21-366) | tokens/s |"
    ratio = next(x for x in lines if x.startswith("skein / RWKV-LM"))
    fast = 8192 / sbs.median_step(runs[0].times, 21)
    assert ratio.endswith(f"{8192 / sbs.median_step(r.times, 21) / fast:.2f}x")
    table, verdict = sbs.loss_tables(runs)
    assert verdict == {"skein": True, "skein ZeRO-2": False, "RWKV-LM #2": False}
    assert [x.split(" | ")[0] for x in table[2:12]] == [f"| {s}" for s in range(1, 11)]
    assert table[5].startswith(f"| 4 | {ref[3]:.4f} | {near[3]:.4f} | {spike[3]:.4f} | {drift[3]:.4f} | ")
    assert [x.split(" | ")[0] for x in table if x.startswith("| 100 ") or x.startswith("| 366 ")] == [
        "| 100",
        "| 366",
    ]
    assert any("skein ZeRO-2 against RWKV-LM #1" in x and "DOES NOT AGREE" in x for x in table)


def test_run_names() -> None:
    assert sbs.run_names(["rwkv_lm", "skein", "skein_zero2", "rwkv_lm"]) == [
        "RWKV-LM #1",
        "skein",
        "skein ZeRO-2",
        "RWKV-LM #2",
    ]
    assert sbs.run_names(["skein", "rwkv_lm"]) == ["skein", "RWKV-LM"]


def test_skein_run_starts_from_the_rwkv_lm_file_on_rwkv_lm_data(corpus: str, tmp_path: Path) -> None:
    """The harness's skein run (the CLI with --init_from an RWKV-LM-layout file that has block 0's
    v0/v1/v2), at a CPU size: its step-1 loss is the loss of the file's weights on RWKV-LM's
    first samples ii = 1..4, and its metrics give one loss and one time per step."""
    from skein.data.dataset import PretrainDataset
    from skein.train.loop.losses import model_loss

    recipe = sbs.load_recipe()
    recipe["model"].update(n_layer=2, d_model=256, vocab_size=320, d_ffn=1024)
    recipe["stages"][0].update(ctx_len=32, micro_bsz=4)
    recipe["schedule"]["warmup_tokens"] = 2 * 128
    recipe["data"]["num_workers"] = 0
    gen = torch.Generator().manual_seed(11)
    sd = {k: torch.randn(s, generator=gen) * 0.2 for k, s in sbs.rwkv_lm_x070_shapes(2, 256, 320, 64).items()}
    init = tmp_path / "rwkv-init.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, init)
    cpu = {"accelerator": "cpu", "precision": "32", "compile": False}
    a = argparse.Namespace(shard=corpus, steps=6, skein_trainer=cpu, run_timeout=300)
    config = sbs.write_skein_config(a, recipe, "skein", tmp_path / "skein")
    run = sbs.run_skein(a, config, init, "skein")
    assert len(run.loss) == len(run.times) == 6 and all(b > a for a, b in zip(run.times, run.times[1:]))

    ds = PretrainDataset([corpus], None, 32, sample_offset=1, pass_order="repeat")
    x, y = (torch.stack(t) for t in zip(*(ds[k] for k in range(4))))
    model = load_source(str(init)).model
    with torch.no_grad():
        want = float(model_loss(model, x, y)[0])
    assert run.loss[0] == pytest.approx(want, abs=2e-4)
    ds0 = PretrainDataset([corpus], None, 32)  # skein's own order starts one sample earlier
    x0 = torch.stack([ds0[k][0] for k in range(4)])
    assert not torch.equal(x0, x)

    # a file that does not fit fails this run with the reason, so the harness goes on to the next
    wide = tmp_path / "wide.pth"
    shapes = sbs.rwkv_lm_x070_shapes(2, 256, 320, 128)  # head size 128: r_k is [2, 128]
    torch.save({k: torch.randn(v, generator=gen).to(torch.bfloat16) for k, v in shapes.items()}, wide)
    with pytest.raises(sbs.RunFailed, match=r"(?s)skein stopped after 0 of 6 steps \(rc \d+\).*r_k"):
        sbs.run_skein(a, config, wide, "skein")


def test_launcher_clears_a_stopped_build_and_loads_a_cached_one(tmp_path: Path) -> None:
    """A build killed mid-way leaves its folder with torch's lock file and no library: the launcher
    must build afresh there (torch would otherwise wait on that lock forever), and load a cached
    library without building."""
    rwkv_lm, cache = tmp_path / "train_temp", tmp_path / "cache"
    (rwkv_lm / "src").mkdir(parents=True)
    stale = cache / "wkv_stopped"
    stale.mkdir(parents=True)
    (stale / "lock").write_text("")
    (stale / "half_built.o").write_bytes(random.randbytes(64))
    built = tmp_path / "built.txt"
    # RWKV-LM's trainer stand-in: swaps the real build for one that records its folder, then
    # asks for the stopped extension as RWKV-LM's model does
    (rwkv_lm / "src" / "trainer.py").write_text(
        "import os, __main__, torch.utils.cpp_extension as cpp\n"
        "def fake_build(name, sources, build_directory, **kw):\n"
        f"    open({str(built)!r}, 'a').write(name + '|' + ','.join(sorted(os.listdir(build_directory))) + '\\n')\n"
        "__main__._load = fake_build\n"
        "cpp.load(name='wkv_stopped', sources=['cuda/wkv.cu'], verbose=False)\n"
        "class train_callback:\n"
        "    def on_train_batch_end(self, *a):\n"
        "        pass\n"
    )  # fmt: skip
    (rwkv_lm / "train.py").write_text("")
    launcher = tmp_path / "launch.py"
    launcher.write_text(sbs.LAUNCHER)
    env = {
        **os.environ,
        "SKEIN_SBS_EXT_CACHE": str(cache),
        "SKEIN_SBS_LOSS_FILE": str(tmp_path / "steps.txt"),
    }
    done = subprocess.run(
        [sys.executable, str(launcher)], cwd=rwkv_lm, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert built.read_text() == "wkv_stopped|\n", "the build ran in an emptied folder"
    assert "extension wkv_stopped: building" in done.stdout

    # a cached library is loaded, not built: a real shared object from the build's folder
    lib = cache / "ops_cached" / "ops_cached.so"
    lib.parent.mkdir()
    lib.write_bytes(random.randbytes(256))  # not a library: loading it must fail, proving it was read
    (rwkv_lm / "src" / "trainer.py").write_text(
        "import torch.utils.cpp_extension as cpp\n"
        "cpp.load(name='ops_cached', sources=['cuda/ops.cu'], is_python_module=False)\n"
    )
    done = subprocess.run(
        [sys.executable, str(launcher)], cwd=rwkv_lm, env=env, capture_output=True, text=True, timeout=120
    )
    assert "extension ops_cached: cached" in done.stdout
    assert done.returncode != 0 and "ops_cached.so" in done.stderr
    assert built.read_text().count("\n") == 1, "a cached extension was built again"
