"""RWKV-LM's trainer and skein on one GPU with the same model, the same initial weights, the same
data order and the same learning rates: RWKV-LM's RWKV-7 demo recipe (configs/recipes/rwkv_lm_demo.yaml:
x070 L12-D768, head 64, vocab 65536, ctx 512, micro_bsz 16, grad_cp 1, bf16, lr 6e-4 -> 6e-5 by
RWKV-LM's cosine after a 10-step warmup, betas (0.9, 0.99), eps 1e-18, weight decay 0.001, grad
clip 1.0, L2Wrap) for --steps steps on one binidx shard. Prints the speed table (median s/step over
steps --skip + 1 .. --steps, tokens/s) and the per-step loss comparison (steps 1-10 one by one and
every 100-step mean, against a tolerance of 0.01).

    python scripts/side_by_side_rwkv_lm.py --rwkv_lm ~/RWKV-LM/RWKV-v7/train_temp \\
        --rwkv_lm_site ~/rwkv_lm_site --ext_cache ~/rwkv_lm_ext --shard data/stdlib_3m --steps 366

In one call, in this order:
1. Parameter parity, before anything is timed: skein's model of the recipe against RWKV-LM's x070
   layout (names and shapes of its src/model.py), by name and shape. The only allowed difference is
   RWKV-LM's block-0 v0/v1/v2, which it creates and never uses; anything else stops the script.
2. The same start: RWKV-LM's demo prepare step (demo-training-prepare.sh: train.py --train_stage 1
   on the CPU) writes rwkv-init.pth (`--init PATH` uses an existing one instead); the parity check
   runs again against its tensors; every run starts from it, RWKV-LM as its demo run does (it
   finds rwkv-init.pth in its proj_dir: --train_stage 3 --load_model 0), skein with --init_from.
3. The runs of --runs, by default: RWKV-LM, skein with its default strategy (one device on one GPU,
   compiled blocks), skein under DeepSpeed ZeRO-2 (trainer.strategy=deepspeed, as RWKV-LM), and
   RWKV-LM again (its step time varies between runs, and its second run from the same weights shows
   how far it drifts from itself).

Same data and learning rates through the recipe's own keys: data.sample_offset 1 and
data.pass_order repeat (RWKV-LM's magic-prime order, from its sample ii = 1) and schedule.kind
rwkv_lm_cosine; RWKV-LM gets skein's magic prime as --magic_prime and --my_exit_tokens = skein's
stages[0].tokens = steps * 8192 (it stops after `steps` steps; both cosines end there).

RWKV-LM (fetched by the user, never part of skein) needs pytorch-lightning 1.9.5 and setuptools < 81
(it imports pkg_resources): install them apart from skein's Lightning, e.g.

    pip install --target ~/rwkv_lm_site "pytorch-lightning==1.9.5" "setuptools<81" deepspeed

RWKV-LM runs with PYTHONPATH=<rwkv_lm_site>, so it never imports skein's Lightning, from a small
launcher this script writes: it appends each step's loss and wall time to a file (RWKV-LM's own
train_log.txt has one line per 40320 samples) and then runs RWKV-LM's train.py unchanged, with the
demo script's --kernel @rwkv3 (its H100 WKV kernel). RWKV-LM compiles its CUDA ops on first use, so
nvcc and ninja must be on the GPU machine.

Those builds (eight CUDA extensions and DeepSpeed's fused Adam) would take minutes one after the
other. Before its runs the script builds every one missing from --ext_cache DIR (default
~/.cache/skein/rwkv_lm_ext) at once, one process each, into DIR/<name>/ (about 2 minutes on 16
cores); later runs load DIR/<name>/<name>.so. --prebuild only builds them, and exits:

    python scripts/side_by_side_rwkv_lm.py --rwkv_lm ... --rwkv_lm_site ... --prebuild
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from skein.rwkv.convert.rwkv_lm import UNUSED_BLOCK0

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "recipes" / "rwkv_lm_demo.yaml"
CTX, MICRO_BSZ, HEAD_SIZE = 512, 16, 64
TOKENS_PER_STEP = CTX * MICRO_BSZ
LOSS_TOLERANCE = 0.01
"""How far skein's loss may lie from RWKV-LM's: at each of steps 1-10 and in every 100-step mean."""
RUN_KINDS = ("rwkv_lm", "skein", "skein_zero2")

LAUNCHER = '''"""Runs RWKV-LM's train.py, appending "step loss seconds" per optimizer step to LOSS_FILE.

With SKEIN_SBS_EXT_CACHE set, every torch.utils.cpp_extension.load (RWKV-LM's CUDA ops and
DeepSpeed's fused Adam) builds into CACHE/<name>/, and a later run loads CACHE/<name>/<name>.so
without building; with SKEIN_SBS_PREBUILD=1 it only builds them, one process per extension."""
import json, os, runpy, shutil, subprocess, sys, time

import torch
import torch.utils.cpp_extension as cpp

CACHE = os.environ.get("SKEIN_SBS_EXT_CACHE")
PREBUILD = os.environ.get("SKEIN_SBS_PREBUILD") == "1"
_load, _jobs = cpp.load, {}
BUILD_ONE = "import json, sys; from torch.utils.cpp_extension import load; load(**json.loads(sys.argv[1]))"


def cached_load(name, sources, **kw):
    if not CACHE:
        return _load(name=name, sources=sources, **kw)
    where = os.path.join(CACHE, name)
    lib = os.path.join(where, name + ".so")
    if os.path.exists(lib):
        print(f"extension {name}: cached", flush=True)
        if kw.get("is_python_module", True):
            return cpp._import_module_from_library(name, where, True)
        torch.ops.load_library(lib)
        return lib
    # no library: whatever is there is a build that was stopped, and its lock file would make
    # this build wait for it forever; start afresh
    shutil.rmtree(where, ignore_errors=True)
    os.makedirs(where)
    print(f"extension {name}: building into {where}", flush=True)
    kw.update(name=name, sources=[os.path.abspath(s) for s in sources], build_directory=where)
    if PREBUILD:
        _jobs[name] = subprocess.Popen([sys.executable, "-c", BUILD_ONE, json.dumps(kw)])
        return None
    return _load(**kw)


cpp.load = cached_load
sys.path.insert(0, os.getcwd())
if PREBUILD:
    # src/model.py reads the RWKV_* variables train.py would set (given by the caller); it
    # registers each op right after loading it; without the library that fails, so
    # run its top-level statements one by one and let those fail: every load still starts a build
    import ast

    body = ast.parse(open("src/model.py").read()).body
    ns = {"__name__": "rwkv_lm_model", "__file__": os.path.abspath("src/model.py")}
    for node in body:
        try:
            exec(compile(ast.Module([node], []), "src/model.py", "exec"), ns)
        except Exception:
            pass
    from deepspeed.ops.op_builder import FusedAdamBuilder

    FusedAdamBuilder().load()
    failed = [name for name, job in _jobs.items() if job.wait() != 0]
    print(f"built {sorted(set(_jobs) - set(failed))}; failed {failed}", flush=True)
    sys.exit(1 if failed else 0)

import src.trainer as T

_orig = T.train_callback.on_train_batch_end
_out = open(os.environ["SKEIN_SBS_LOSS_FILE"], "a", buffering=1)


def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
    _orig(self, trainer, pl_module, outputs, batch, batch_idx)
    if trainer.is_global_zero:
        _out.write(f"{trainer.global_step} {trainer.my_loss:.6f} {time.perf_counter():.6f}\\n")


T.train_callback.on_train_batch_end = on_train_batch_end
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
'''


@dataclass
class Run:
    """One trainer's run: its per-step losses and the wall-clock second at the end of each step."""

    name: str
    loss: list[float]
    times: list[float]


def load_recipe() -> dict[str, Any]:
    return yaml.safe_load(RECIPE.read_text())


def shard_tokens(prefix: str) -> int:
    from skein.data.binidx import BinIdxDataset

    return int(BinIdxDataset(prefix).num_tokens)


def rwkv_lm_x070_shapes(
    n_layer: int, n_embd: int, vocab_size: int, head_size: int
) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the state dict RWKV-LM's RWKV-v7/train_temp builds for x070 (src/model.py):
    every block has the value-residual v0/v1/v2 (block 0 never reads them); the LoRA widths are
    max(32, round(f sqrt(C) / 32) * 32) with f = 2.5 (w, a), 1.7 (v) and 5 (g); the channel mix is
    4 C wide whatever --dim_ffn says."""
    C, vec = n_embd, (1, 1, n_embd)

    def lora(f: float) -> int:
        return max(32, int(round(f * C**0.5 / 32) * 32))

    out: dict[str, tuple[int, ...]] = {"emb.weight": (vocab_size, C)}
    for i in range(n_layer):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2", *(("ln0",) if i == 0 else ())):
            out[f"{b}{ln}.weight"] = out[f"{b}{ln}.bias"] = (C,)
        att = {f"x_{x}": vec for x in "rwkvag"}
        for name, width in (("w", lora(2.5)), ("a", lora(2.5)), ("v", lora(1.7))):
            att.update({f"{name}0": vec, f"{name}1": (C, width), f"{name}2": (width, C)})
        att.update(g1=(C, lora(5)), g2=(lora(5), C), k_k=vec, k_a=vec, r_k=(C // head_size, head_size))
        att.update({f"{lin}.weight": (C, C) for lin in ("receptance", "key", "value", "output")})
        att.update({"ln_x.weight": (C,), "ln_x.bias": (C,)})
        out.update({f"{b}att.{k}": v for k, v in att.items()})
        out.update({f"{b}ffn.x_k": vec, f"{b}ffn.key.weight": (4 * C, C), f"{b}ffn.value.weight": (C, 4 * C)})
    out.update({"ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (vocab_size, C)})
    return out


class ParityError(ValueError):
    """skein's model and RWKV-LM's differ in more than block 0's unused v0/v1/v2."""


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def check_parity(skein: Mapping[str, Any], rwkv_lm: Mapping[str, Any], source: str) -> str:
    """Compare skein's state dict with RWKV-LM's by name and shape (values are tensors or shapes).
    The only allowed difference: RWKV-LM's blocks.0.att.v0/v1/v2, in its dict alone. Returns a
    one-line account with both parameter counts; raises ParityError naming every difference."""
    ours = {k: _shape(v) for k, v in skein.items()}
    theirs = {k.removeprefix("_forward_module."): _shape(v) for k, v in rwkv_lm.items()}
    problems = [f"{k} {ours[k]} only in skein" for k in sorted(ours.keys() - theirs.keys())]
    problems += [
        f"{k} {theirs[k]} only in RWKV-LM" for k in sorted(theirs.keys() - ours.keys() - set(UNUSED_BLOCK0))
    ]
    problems += [
        f"{k}: skein {ours[k]}, RWKV-LM {theirs[k]}"
        for k in sorted(ours.keys() & theirs.keys())
        if ours[k] != theirs[k]
    ]
    n_ours, n_theirs = (sum(math.prod(s) for s in d.values()) for d in (ours, theirs))
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ParityError(
            f"parameter parity with {source} fails, {len(problems)} difference(s) (skein {n_ours:,} parameters, "
            f"RWKV-LM {n_theirs:,}): {shown}. "
            "Only RWKV-LM's unused blocks.0.att.v0/v1/v2 may differ: give the recipe RWKV-LM's model "
            f"({RECIPE.relative_to(ROOT)}) before timing anything"
        )
    unused = n_theirs - n_ours
    return (
        f"parameter parity with {source}: skein {n_ours:,} = RWKV-LM {n_theirs:,} - {unused:,} "
        "(blocks.0.att.v0/v1/v2, never used); every other name and shape equal"
    )


def skein_shapes(config: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the model of a skein run config (built on the meta device: no memory, no init)."""
    import torch

    from skein.rwkv.models import build_model
    from skein.train.config import load_config

    with torch.device("meta"):
        model = build_model(load_config(config).model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def rwkv_lm_file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of a .pth RWKV-LM wrote (memory-mapped: the tensors are not read)."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: tuple(v.shape) for k, v in sd.items()}


def _flags(flags: dict[str, Any]) -> list[str]:
    out = []
    for k, v in flags.items():
        out += [f"--{k}", str(v)]
    return out


def _rwkv_lm_model_and_data(
    recipe: dict[str, Any], shard: str, prime: int, proj_dir: Path, kernel: str
) -> dict[str, Any]:
    """The flags both demo scripts give train.py alike: the model, the data and the engine."""
    m, st = recipe["model"], recipe["stages"][0]
    return {
        "wandb": "",
        "proj_dir": proj_dir,
        "my_testing": "x070",
        "ctx_len": st["ctx_len"],
        "epoch_begin": 0,
        "data_file": shard,
        "data_type": "binidx",
        "magic_prime": prime,
        "vocab_size": m["vocab_size"],
        "n_layer": m["n_layer"],
        "n_embd": m["d_model"],
        "head_size": m["head_size"],
        "kernel": kernel,
        "num_nodes": 1,
        "devices": 1,
        "precision": "bf16",
        "strategy": "deepspeed_stage_2",
    }


def rwkv_lm_args(
    recipe: dict[str, Any], shard: str, steps: int, prime: int, proj_dir: Path, kernel: str
) -> list[str]:
    """RWKV-LM train.py flags of its demo run (demo-training-run.sh) with the recipe's numbers: one
    call of `steps` steps (--my_exit_tokens = steps * tokens per step) from the rwkv-init.pth in
    proj_dir (--train_stage 3 --load_model 0, as the demo)."""
    o, st = recipe["optim"], recipe["stages"][0]
    tps = st["ctx_len"] * st["micro_bsz"]
    return _flags(
        {
            **_rwkv_lm_model_and_data(recipe, shard, prime, proj_dir, kernel),
            "load_model": "0",
            "train_stage": 3,
            "epoch_count": 999999,
            "my_exit_tokens": steps * tps,
            "micro_bsz": st["micro_bsz"],
            "lr_init": o["lr_init"],
            "lr_final": o["lr_final"],
            "warmup_steps": recipe["schedule"]["warmup_tokens"] // tps,
            "beta1": o["betas"][0],
            "beta2": o["betas"][1],
            "adam_eps": o["eps"],
            "weight_decay": o["weight_decay"],
            "epoch_save": 10,
            "head_chunk": 0,
            "grad_clip": o["grad_clip"],
            "accelerator": "gpu",
            "grad_cp": 1 if recipe["trainer"]["grad_checkpointing"] else 0,
            "enable_progress_bar": False,
        }
    )


def rwkv_lm_prepare_args(
    recipe: dict[str, Any], shard: str, num_tokens: int, prime: int, proj_dir: Path, kernel: str
) -> list[str]:
    """demo-training-prepare.sh's flags: train.py --train_stage 1 on the CPU writes
    proj_dir/rwkv-init.pth and exits. --kernel as the runs (the demo leaves it out): it picks
    which WKV extension loads, not the weights, and that one is in the extension cache."""
    return _flags(
        {
            **_rwkv_lm_model_and_data(recipe, shard, prime, proj_dir, kernel),
            "train_stage": 1,
            "epoch_count": 1,
            "epoch_save": 1,
            "weight_decay": 0,
            "micro_bsz": 1,
            "my_exit_tokens": num_tokens,
            "lr_init": 1e-5,
            "lr_final": 1e-5,
            "warmup_steps": 10,
            "beta1": 0.9,
            "beta2": 0.99,
            "adam_eps": 1e-8,
            "accelerator": "cpu",
            "grad_cp": 1,
        }
    )


def rwkv_lm_env(a: argparse.Namespace) -> dict[str, str]:
    """RWKV-LM's environment: its own site folder instead of skein's PYTHONPATH, and the extension
    cache when one is given."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(Path(a.rwkv_lm_site).resolve()))
    if a.ext_cache:
        env.update(SKEIN_SBS_EXT_CACHE=str(Path(a.ext_cache).resolve()))
    return env


def prebuild(a: argparse.Namespace, out: Path) -> None:
    """Build RWKV-LM's CUDA extensions and DeepSpeed's fused Adam into --ext_cache, in parallel."""
    out.mkdir(parents=True, exist_ok=True)
    launcher = out / "launch.py"
    launcher.write_text(LAUNCHER)
    env = {**rwkv_lm_env(a), "SKEIN_SBS_PREBUILD": "1"}
    # what RWKV-LM's train.py would set from rwkv_lm_args' flags before importing its model
    env.update(RWKV_MY_TESTING="x070", RWKV_KERNEL=a.rwkv_lm_kernel, RWKV_CTXLEN=str(CTX),
               RWKV_HEAD_SIZE=str(HEAD_SIZE), RWKV_HEAD_L2WRAP_CE_CHUNK="0", RWKV_FLOAT_MODE="bf16",
               RWKV_JIT_ON="1")  # fmt: skip
    t0 = time.time()
    # its own process group: a timeout stops the builds it started too
    job = subprocess.Popen([sys.executable, str(launcher)], cwd=a.rwkv_lm, env=env, start_new_session=True)
    try:
        rc = job.wait(timeout=a.prebuild_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        raise SystemExit(
            f"prebuild: not done after --prebuild_timeout {a.prebuild_timeout:.0f} s; the extensions "
            f"built so far stay in {a.ext_cache} and the next run builds only the others"
        ) from None
    print(f"prebuild: rc {rc} in {time.time() - t0:.0f} s into {a.ext_cache}", flush=True)
    if rc != 0:
        raise SystemExit(rc)


class RunFailed(RuntimeError):
    """A run stopped early or did not finish in --run_timeout; the others still run."""


def _tail(log: Path, lines: int = 12) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join("    " + line for line in text[-lines:])


def _subprocess(command: list[str], log: Path, timeout: float, **kw: Any) -> int | str:
    """Run `command` with its output in `log`: its return code, or "timed out"."""
    with open(log, "w") as f:
        try:
            return subprocess.run(
                command, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, **kw
            ).returncode
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s"


def _launch(
    a: argparse.Namespace, work: Path, args: list[str], env_extra: dict[str, str]
) -> tuple[int | str, Path]:
    """Run RWKV-LM's train.py through the launcher in its folder; (return code, log path)."""
    work.mkdir(parents=True, exist_ok=True)
    launcher = work / "launch.py"
    launcher.write_text(LAUNCHER)
    env = {**rwkv_lm_env(a), **env_extra}
    log = work / "log.txt"
    rc = _subprocess([sys.executable, str(launcher), *args], log, a.run_timeout, cwd=a.rwkv_lm, env=env)
    return rc, log


def prepare_init(
    a: argparse.Namespace, recipe: dict[str, Any], num_tokens: int, prime: int, out: Path
) -> Path:
    """RWKV-LM's initial weights, written by its demo prepare step."""
    work = out / "rwkv_lm_init"
    proj = work / "proj"
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True)
    args = rwkv_lm_prepare_args(
        recipe, str(Path(a.shard).resolve()), num_tokens, prime, proj, a.rwkv_lm_kernel
    )
    t0 = time.time()
    rc, log = _launch(a, work, args, {"SKEIN_SBS_LOSS_FILE": str(work / "steps.txt")})
    init = proj / "rwkv-init.pth"
    if not init.is_file():
        raise SystemExit(f"RWKV-LM's prepare step wrote no {init} (rc {rc}); see {log}:\n{_tail(log)}")
    print(f"RWKV-LM prepare step: {init} in {time.time() - t0:.0f} s", flush=True)
    return init


def run_rwkv_lm(
    a: argparse.Namespace, recipe: dict[str, Any], prime: int, init: Path, work: Path, name: str
) -> Run:
    """RWKV-LM's demo run from `init`: its losses and step end times."""
    proj = work / "proj"
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True)
    (proj / "rwkv-init.pth").symlink_to(init.resolve())  # the demo run loads the newest rwkv-*.pth
    losses = work / "steps.txt"
    losses.unlink(missing_ok=True)
    args = rwkv_lm_args(recipe, str(Path(a.shard).resolve()), a.steps, prime, proj, a.rwkv_lm_kernel)
    print(f"{name}: {a.rwkv_lm} (log {work / 'log.txt'})", flush=True)
    rc, log = _launch(a, work, args, {"SKEIN_SBS_LOSS_FILE": str(losses)})
    rows = [line.split() for line in losses.read_text().splitlines()] if losses.exists() else []
    if len(rows) < a.steps:
        raise RunFailed(
            f"{name} stopped after {len(rows)} of {a.steps} steps (rc {rc}); {log}:\n{_tail(log)}"
        )
    return Run(name, [float(r[1]) for r in rows[: a.steps]], [float(r[2]) for r in rows[: a.steps]])


def skein_config(
    recipe: dict[str, Any], shard: str, steps: int, out_dir: Path, trainer: dict[str, Any]
) -> dict[str, Any]:
    """The recipe as a run of `steps` steps on `shard` (its data order and schedule kept), logging
    every step, with `trainer` overrides."""
    cfg = copy.deepcopy(recipe)
    cfg["run"]["out_dir"] = str(out_dir)
    cfg["data"].update(train=[shard], tokenizer=None)
    cfg["stages"][0]["tokens"] = steps * cfg["stages"][0]["ctx_len"] * cfg["stages"][0]["micro_bsz"]
    cfg["checkpoint"] = {"every_steps": steps + 1, "keep_last": 1}
    cfg["log"] = {"every_steps": 1, "wandb": "disabled", "progress_bar": False}
    cfg["trainer"].update(trainer)
    return cfg


SKEIN_STRATEGIES = {"skein": {}, "skein_zero2": {"strategy": "deepspeed", "zero_stage": 2}}
"""Trainer overrides of each skein run: its default strategy (one device on one GPU), DeepSpeed ZeRO-2."""


def write_skein_config(a: argparse.Namespace, recipe: dict[str, Any], kind: str, work: Path) -> Path:
    cfg = skein_config(
        recipe,
        str(Path(a.shard).resolve()),
        a.steps,
        work / "run",
        {**a.skein_trainer, **SKEIN_STRATEGIES[kind]},
    )
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_skein(a: argparse.Namespace, config: Path, init: Path, name: str) -> Run:
    """skein's run of `config` from RWKV-LM's initial weights: its losses and step end times."""
    work = config.parent
    shutil.rmtree(work / "run", ignore_errors=True)
    log = work / "log.txt"
    print(f"{name}: {config} (log {log})", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "skein.train.cli", "train", str(config), "--resume", "false"]
    rc = _subprocess([*command, "--init_from", str(init)], log, a.run_timeout, cwd=ROOT, env=env)
    metrics = work / "run" / "metrics.csv"
    rows = list(csv.DictReader(open(metrics))) if metrics.exists() else []
    if len(rows) < a.steps:
        raise RunFailed(
            f"{name} stopped after {len(rows)} of {a.steps} steps (rc {rc}); {log}:\n{_tail(log)}"
        )
    return Run(name, [float(r["loss"]) for r in rows[: a.steps]], [float(r["time"]) for r in rows[: a.steps]])


def median_step(times: list[float], first: int) -> float:
    """Median seconds of steps first..len(times) (step s took times[s-1] - times[s-2]; first >= 2)."""
    return statistics.median(times[s - 1] - times[s - 2] for s in range(max(first, 2), len(times) + 1))


def window_means(loss: list[float], width: int = 100) -> list[tuple[int, float]]:
    """(last step, mean loss) over steps 1-100, 101-200, ..., and the last partial window."""
    return [
        (min(i + width, len(loss)), statistics.fmean(loss[i : i + width])) for i in range(0, len(loss), width)
    ]


def speed_table(runs: list[Run], first: int) -> list[str]:
    """Median s/step over steps first..end and tokens/s per run; each skein run against the faster
    RWKV-LM run."""
    last = len(runs[0].times)
    lines = [f"| run | s/step (median, steps {first}-{last}) | tokens/s |", "| --- | --- | --- |"]
    speed = {}
    for r in runs:
        med = median_step(r.times, first)
        speed[r.name] = TOKENS_PER_STEP / med
        lines.append(f"| {r.name} | {med:.4f} | {speed[r.name]:,.0f} |")
    ref = [v for k, v in speed.items() if k.startswith("RWKV-LM")]
    for k, v in speed.items():
        if ref and not k.startswith("RWKV-LM"):
            lines.append(f"{k} / RWKV-LM (its faster run) tokens/s: {v / max(ref):.2f}x")
    return lines


def loss_tables(runs: list[Run], tol: float = LOSS_TOLERANCE) -> tuple[list[str], dict[str, bool]]:
    """Steps 1-10 one by one and every 100-step mean of each run, with each other run's difference
    from the first RWKV-LM run; and per other run whether all of them lie within `tol`."""
    ref = next(r for r in runs if r.name.startswith("RWKV-LM"))
    others = [r for r in runs if r is not ref]
    head = "| " + " | ".join([*(r.name for r in runs), *(f"{r.name} - {ref.name}" for r in others)]) + " |"
    rule = "| --- " * (1 + len(runs) + len(others)) + "|"
    verdict = {}
    lines = ["| step " + head, rule]
    first = min(10, len(ref.loss))
    for s in range(first):
        cells = [f"{r.loss[s]:.4f}" for r in runs] + [f"{r.loss[s] - ref.loss[s]:+.4f}" for r in others]
        lines.append(f"| {s + 1} | " + " | ".join(cells) + " |")
    means = {r.name: window_means(r.loss) for r in runs}
    lines += ["", "| steps up to " + head, rule]
    for i, (end, m_ref) in enumerate(means[ref.name]):
        cells = [f"{means[r.name][i][1]:.4f}" for r in runs]
        cells += [f"{means[r.name][i][1] - m_ref:+.4f}" for r in others]
        lines.append(f"| {end} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in others:
        step_gap = max(abs(r.loss[s] - ref.loss[s]) for s in range(first))
        mean_gap = max(abs(a[1] - b[1]) for a, b in zip(means[r.name], means[ref.name]))
        verdict[r.name] = step_gap <= tol and mean_gap <= tol
        lines.append(
            f"{r.name} against {ref.name}: steps 1-{first} within {step_gap:.4f}, 100-step means within "
            f"{mean_gap:.4f} (tolerance {tol}): {'agrees' if verdict[r.name] else 'DOES NOT AGREE'}"
        )
    return lines, verdict


def report(a: argparse.Namespace, runs: list[Run], parity: list[str], failed: list[str]) -> str:
    lines = [f"side by side: {a.steps} steps of {TOKENS_PER_STEP} tokens, shard {a.shard}", *parity, ""]
    lines += [f"FAILED: {f.splitlines()[0]}" for f in failed] + ([""] if failed else [])
    if not runs:
        return "\n".join(lines)
    lines += speed_table(runs, a.skip + 1)
    if any(r.name.startswith("RWKV-LM") for r in runs) and len(runs) > 1:
        lines += ["", *loss_tables(runs)[0]]
    return "\n".join(lines)


def run_names(kinds: list[str]) -> list[str]:
    """Display names of the runs: RWKV-LM #1, #2 ... when it runs more than once."""
    names = {"rwkv_lm": "RWKV-LM", "skein": "skein", "skein_zero2": "skein ZeRO-2"}
    count = {k: kinds.count(k) for k in kinds}
    seen: dict[str, int] = {}
    out = []
    for k in kinds:
        seen[k] = seen.get(k, 0) + 1
        out.append(f"{names[k]} #{seen[k]}" if count[k] > 1 else names[k])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rwkv_lm", required=True, help="RWKV-LM's RWKV-v7/train_temp folder")
    ap.add_argument("--rwkv_lm_site", required=True, help="--target folder with pytorch-lightning 1.9.5 etc.")
    ap.add_argument("--shard", help="binidx prefix (vocab 65536, e.g. RWKV World minipile)")
    ap.add_argument("--steps", type=int, default=366, help="optimizer steps of each run")
    ap.add_argument("--skip", type=int, default=20, help="first steps left out of the step-time median")
    ap.add_argument("--rwkv_lm_kernel", default="@rwkv3", help="RWKV-LM --kernel ('': its default op)")
    ap.add_argument(
        "--skein", default="", help="skein trainer overrides, e.g. 'compile=false fused_loss=false'"
    )
    ap.add_argument(
        "--runs",
        default="rwkv_lm,skein,skein_zero2,rwkv_lm",
        help=f"the runs, in order, comma-separated, from {', '.join(RUN_KINDS)}",
    )
    ap.add_argument(
        "--init", default="", help="RWKV-LM initial weights to use (default: its prepare step writes them)"
    )
    ap.add_argument(
        "--run_timeout", type=float, default=300, help="seconds a run may take before it counts as failed"
    )
    ap.add_argument(
        "--ext_cache",
        default=os.environ.get("SKEIN_SBS_EXT_CACHE", str(Path.home() / ".cache" / "skein" / "rwkv_lm_ext")),
        help="folder where RWKV-LM's CUDA extensions are built once, in parallel, and loaded by later runs",
    )
    ap.add_argument("--prebuild", action="store_true", help="only build the extensions into --ext_cache")
    ap.add_argument(
        "--prebuild_timeout", type=float, default=420, help="seconds the extension builds may take together"
    )
    a = ap.parse_args()
    a.skein_trainer = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.skein.split())}
    if not (Path(a.rwkv_lm) / "train.py").is_file():
        raise SystemExit(f"--rwkv_lm {a.rwkv_lm}: no train.py there (want RWKV-LM/RWKV-v7/train_temp)")
    out = Path(os.environ.get("OUT") or "side_by_side_out").resolve()
    if a.prebuild:
        return prebuild(a, out / "prebuild")
    if not a.shard:
        raise SystemExit("--shard is required (a binidx prefix)")
    if a.steps <= a.skip + 1:
        raise SystemExit(f"--steps {a.steps} must exceed --skip {a.skip} + 1")
    kinds = [k.strip() for k in a.runs.split(",") if k.strip()]
    if not kinds or any(k not in RUN_KINDS for k in kinds):
        raise SystemExit(f"--runs {a.runs!r}: name runs from {', '.join(RUN_KINDS)}, comma-separated")
    from skein.data.sampler import MagicPrimeOrder

    recipe = load_recipe()
    n = shard_tokens(a.shard)
    prime = MagicPrimeOrder(n, CTX).p
    if prime / (n // CTX) <= 0.9:
        raise SystemExit(f"{a.shard}: {n} tokens is too small for RWKV-LM's magic-prime check at ctx {CTX}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    prebuild(a, out / "prebuild")  # every missing extension at once; seconds when all are cached
    names = run_names(kinds)
    configs = {k: write_skein_config(a, recipe, k, out / k) for k in set(kinds) - {"rwkv_lm"}}
    m = recipe["model"]
    layout = rwkv_lm_x070_shapes(m["n_layer"], m["d_model"], m["vocab_size"], m["head_size"])
    ours = skein_shapes(configs.get("skein") or write_skein_config(a, recipe, "skein", out / "skein"))
    try:
        parity = [check_parity(ours, layout, "RWKV-LM's x070 layout (src/model.py)")]
        print(parity[0], flush=True)
        init = Path(a.init) if a.init else prepare_init(a, recipe, n, prime, out)
        parity.append(check_parity(ours, rwkv_lm_file_shapes(init), str(init)))
        print(parity[1], flush=True)
    except ParityError as e:
        raise SystemExit(str(e)) from None
    runs, failed = [], []
    for kind, name in zip(kinds, names):
        try:
            if kind == "rwkv_lm":
                work = out / name.lower().replace(" #", "_").replace("-", "_")
                run = run_rwkv_lm(a, recipe, prime, init, work, name)
            else:
                run = run_skein(a, configs[kind], init, name)
        except RunFailed as e:  # the other runs still go: one call measures all of them
            print(f"FAILED: {e}", flush=True)
            failed.append(str(e))
            continue
        runs.append(run)
        # the report so far, after every run: a call stopped at its time limit still leaves one
        (out / "side_by_side.md").write_text(report(a, runs, parity, failed) + "\n")
        print(
            f"{name}: median {median_step(run.times, a.skip + 1):.4f} s/step over steps {a.skip + 1}-{a.steps}; "
            f"losses at steps 1-3 {', '.join(f'{x:.4f}' for x in run.loss[:3])}; {time.time() - t0:.0f} s so far",
            flush=True,
        )
    text = report(a, runs, parity, failed)
    (out / "side_by_side.md").write_text(text + "\n")
    print(f"\n({time.time() - t0:.0f} s; magic prime {prime}; logs in {out})\n{text}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
