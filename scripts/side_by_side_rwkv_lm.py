"""RWKV-LM's trainer and skein, one after the other on the same GPU, on the same binidx shard with
RWKV-LM's RWKV-7 demo recipe: x070 L12-D768, head 64, vocab 65536, ctx 512, micro_bsz 16, grad_cp 1,
bf16, lr 6e-4 -> 6e-5 cosine after a 10-step warmup, betas (0.9, 0.99), eps 1e-18, weight decay
0.001, grad clip 1.0, L2Wrap; RWKV-LM on DeepSpeed ZeRO-2 (its demo's setting), skein on the
engine its config picks (one device on one GPU, compiled blocks; `--skein` overrides it). Prints
both tokens/s (median step time after warmup) and both 100-step mean losses.

    python scripts/side_by_side_rwkv_lm.py --rwkv_lm ~/RWKV-LM/RWKV-v7/train_temp \\
        --rwkv_lm_site ~/rwkv_lm_site --shard data/minipile_3m --steps 366

RWKV-LM (fetched by the user, never part of skein) needs pytorch-lightning 1.9.5 and setuptools < 81
(it imports pkg_resources): install them apart from skein's Lightning, e.g.

    pip install --target ~/rwkv_lm_site "pytorch-lightning==1.9.5" "setuptools<81" deepspeed

RWKV-LM runs with PYTHONPATH=<rwkv_lm_site>, so it never imports skein's Lightning, from a small
launcher this script writes: it appends each step's loss and wall time to a file (RWKV-LM's own
train_log.txt has one line per 40320 samples) and then runs RWKV-LM's train.py unchanged with
--train_stage 0 --load_model "" (RWKV-LM then writes its initial weights and trains in one call)
and --my_exit_tokens = steps * 8192 (it stops after `steps` steps; its cosine ends there), with
the demo script's --kernel @rwkv3 (its H100 WKV kernel; RWKV-LM compiles its CUDA ops on first use,
so nvcc and ninja must be on the GPU machine).

Those builds (eight CUDA extensions and DeepSpeed's fused Adam) take minutes, one after the other.
With --ext_cache DIR each is built once into DIR/<name>/ and later runs load DIR/<name>/<name>.so;
--prebuild builds them all at once, one process each, and exits:

    python scripts/side_by_side_rwkv_lm.py --rwkv_lm ... --rwkv_lm_site ... --ext_cache ~/rwkv_lm_ext --prebuild

skein runs configs/recipes/rwkv_lm_demo.yaml with the shard and stages.0.tokens = steps * 8192.

Same data: both read the shard in RWKV-LM's magic-prime order with the same prime (skein's
data/sampler.py computes it; it is passed to RWKV-LM as --magic_prime). RWKV-LM's first sample is
ii = 1, skein's k = 0, so each step's 16 samples overlap in 15. Differences that remain: the initial
weights are drawn by each trainer's own RNG, and RWKV-LM's cosine measures progress from the end
of warmup, skein's from token 0.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "recipes" / "rwkv_lm_demo.yaml"
CTX, MICRO_BSZ, HEAD_SIZE = 512, 16, 64
TOKENS_PER_STEP = CTX * MICRO_BSZ

LAUNCHER = '''"""Runs RWKV-LM's train.py, appending "step loss seconds" per optimizer step to LOSS_FILE.

With SKEIN_SBS_EXT_CACHE set, every torch.utils.cpp_extension.load (RWKV-LM's CUDA ops and
DeepSpeed's fused Adam) builds into CACHE/<name>/, and a later run loads CACHE/<name>/<name>.so
without building; with SKEIN_SBS_PREBUILD=1 it only builds them, one process per extension."""
import json, os, runpy, subprocess, sys, time

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
        if kw.get("is_python_module", True):
            return cpp._import_module_from_library(name, where, True)
        torch.ops.load_library(lib)
        return lib
    os.makedirs(where, exist_ok=True)
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


def shard_tokens(prefix: str) -> int:
    from skein.data.binidx import BinIdxDataset

    return int(BinIdxDataset(prefix).num_tokens)


def rwkv_lm_args(shard: str, steps: int, prime: int, proj_dir: Path) -> list[str]:
    """RWKV-LM train.py flags for the demo recipe (demo-training-run.sh), one call, `steps` steps."""
    flags = {
        "load_model": "",
        "train_stage": 0,
        "wandb": "",
        "proj_dir": proj_dir,
        "my_testing": "x070",
        "ctx_len": CTX,
        "epoch_count": 999999,
        "epoch_begin": 0,
        "epoch_save": 1000000,
        "data_file": shard,
        "data_type": "binidx",
        "vocab_size": 65536,
        "my_exit_tokens": steps * TOKENS_PER_STEP,
        "magic_prime": prime,
        "num_nodes": 1,
        "micro_bsz": MICRO_BSZ,
        "n_layer": 12,
        "n_embd": 768,
        "head_size": HEAD_SIZE,
        "head_chunk": 0,
        "lr_init": 6e-4,
        "lr_final": 6e-5,
        "warmup_steps": 10,
        "beta1": 0.9,
        "beta2": 0.99,
        "adam_eps": 1e-18,
        "weight_decay": 0.001,
        "grad_clip": 1.0,
        "accelerator": "gpu",
        "devices": 1,
        "precision": "bf16",
        "strategy": "deepspeed_stage_2",
        "grad_cp": 1,
        "enable_progress_bar": False,
    }
    out = []
    for k, v in flags.items():
        out += [f"--{k}", str(v)]
    return out


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
    rc = subprocess.run([sys.executable, str(launcher)], cwd=a.rwkv_lm, env=env).returncode
    print(f"prebuild: rc {rc} in {time.time() - t0:.0f} s into {a.ext_cache}", flush=True)
    if rc != 0:
        raise SystemExit(rc)


def run_rwkv_lm(a: argparse.Namespace, prime: int, out: Path) -> tuple[list[float], list[float]]:
    """Losses and step seconds of RWKV-LM's run."""
    work = out / "rwkv_lm"
    work.mkdir(parents=True, exist_ok=True)
    launcher, losses = work / "launch.py", work / "steps.txt"
    launcher.write_text(LAUNCHER)
    losses.unlink(missing_ok=True)
    args = rwkv_lm_args(str(Path(a.shard).resolve()), a.steps, prime, work / "proj")
    if a.rwkv_lm_kernel:
        args += ["--kernel", a.rwkv_lm_kernel]
    env = rwkv_lm_env(a)
    env.update(SKEIN_SBS_LOSS_FILE=str(losses))
    log = work / "log.txt"
    print(f"RWKV-LM: {a.rwkv_lm} (log {log})", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, str(launcher), *args], cwd=a.rwkv_lm, env=env, stdout=f, stderr=subprocess.STDOUT
        ).returncode
    rows = [line.split() for line in losses.read_text().splitlines()] if losses.exists() else []
    if len(rows) < a.steps:
        raise SystemExit(f"RWKV-LM stopped after {len(rows)} of {a.steps} steps (rc {rc}); see {log}")
    loss = [float(r[1]) for r in rows[: a.steps]]
    t = [float(r[2]) for r in rows[: a.steps]]
    return loss, [b - a for a, b in zip(t, t[1:])]


def run_skein(a: argparse.Namespace, out: Path) -> tuple[list[float], list[float]]:
    """Losses and step seconds of skein's run of the same recipe."""
    work = out / "skein"
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg["run"]["out_dir"] = str(work / "run")
    cfg["data"] = {"train": [str(Path(a.shard).resolve())], "tokenizer": None, "num_workers": 1}
    cfg["stages"][0]["tokens"] = a.steps * TOKENS_PER_STEP
    cfg["checkpoint"] = {"every_steps": a.steps + 1, "keep_last": 1}
    cfg["log"] = {"every_steps": 1, "wandb": "disabled", "progress_bar": False}
    cfg["trainer"].update(a.skein_trainer)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = work / "log.txt"
    print(f"skein: {path} (log {log})", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "skein.train.cli", "train", str(path), "--resume", "false"],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        ).returncode
    metrics = work / "run" / "metrics.csv"
    rows = list(csv.DictReader(open(metrics))) if metrics.exists() else []
    if rc != 0 or len(rows) < a.steps:
        raise SystemExit(f"skein stopped after {len(rows)} of {a.steps} steps (rc {rc}); see {log}")
    loss = [float(r["loss"]) for r in rows[: a.steps]]
    t = [float(r["time"]) for r in rows[: a.steps]]
    return loss, [b - a for a, b in zip(t, t[1:])]


def window_means(loss: list[float], width: int = 100) -> list[tuple[int, float]]:
    """(last step, mean loss) over steps 1-100, 101-200, ..., and the last partial window."""
    return [
        (min(i + width, len(loss)), statistics.fmean(loss[i : i + width])) for i in range(0, len(loss), width)
    ]


def report(a: argparse.Namespace, rl: tuple, sk: tuple) -> str:
    lines = [f"side by side: {a.steps} steps of {TOKENS_PER_STEP} tokens, shard {a.shard}"]
    lines.append("| trainer | s/step (median after warmup) | tokens/s |")
    lines.append("| --- | --- | --- |")
    speeds = {}
    for name, (_, dt) in (("RWKV-LM", rl), ("skein", sk)):
        med = statistics.median(dt[a.skip :])
        speeds[name] = TOKENS_PER_STEP / med
        lines.append(f"| {name} | {med:.4f} | {speeds[name]:,.0f} |")
    lines.append(f"skein / RWKV-LM tokens/s: {speeds['skein'] / speeds['RWKV-LM']:.2f}x")
    lines.append("| steps up to | RWKV-LM mean loss | skein mean loss | skein - RWKV-LM |")
    lines.append("| --- | --- | --- | --- |")
    for (end, lr), (_, ls) in zip(window_means(rl[0]), window_means(sk[0])):
        lines.append(f"| {end} | {lr:.4f} | {ls:.4f} | {ls - lr:+.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rwkv_lm", required=True, help="RWKV-LM's RWKV-v7/train_temp folder")
    ap.add_argument("--rwkv_lm_site", required=True, help="--target folder with pytorch-lightning 1.9.5 etc.")
    ap.add_argument("--shard", help="binidx prefix (vocab 65536, e.g. RWKV World minipile)")
    ap.add_argument("--steps", type=int, default=366, help="optimizer steps of each trainer")
    ap.add_argument("--skip", type=int, default=10, help="first steps left out of the step-time median")
    ap.add_argument("--rwkv_lm_kernel", default="@rwkv3", help="RWKV-LM --kernel ('': its default op)")
    ap.add_argument(
        "--skein", default="", help="skein trainer overrides, e.g. 'compile=false fused_loss=false'"
    )
    ap.add_argument("--only", choices=["both", "rwkv_lm", "skein"], default="both")
    ap.add_argument(
        "--ext_cache",
        default=os.environ.get("SKEIN_SBS_EXT_CACHE", ""),
        help="folder where RWKV-LM's CUDA extensions are built once and loaded by later runs",
    )
    ap.add_argument("--prebuild", action="store_true", help="only build the extensions into --ext_cache")
    a = ap.parse_args()
    a.skein_trainer = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.skein.split())}
    if not (Path(a.rwkv_lm) / "train.py").is_file():
        raise SystemExit(f"--rwkv_lm {a.rwkv_lm}: no train.py there (want RWKV-LM/RWKV-v7/train_temp)")
    out = Path(os.environ.get("OUT") or "side_by_side_out").resolve()
    if a.prebuild:
        if not a.ext_cache:
            raise SystemExit("--prebuild needs --ext_cache")
        return prebuild(a, out / "prebuild")
    if not a.shard:
        raise SystemExit("--shard is required (a binidx prefix)")
    if a.steps <= a.skip + 1:
        raise SystemExit(f"--steps {a.steps} must exceed --skip {a.skip} + 1")
    from skein.data.sampler import magic_prime

    n = shard_tokens(a.shard)
    prime = magic_prime((n - 1) // CTX)
    if prime / (n // CTX) <= 0.9:
        raise SystemExit(f"{a.shard}: {n} tokens is too small for RWKV-LM's magic-prime check at ctx {CTX}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rl = run_rwkv_lm(a, prime, out) if a.only != "skein" else None
    sk = run_skein(a, out) if a.only != "rwkv_lm" else None
    if rl is None or sk is None:
        one = rl or sk
        print(f"one trainer only: median step {statistics.median(one[1][a.skip :]):.4f} s")
        return
    text = report(a, rl, sk)
    (out / "side_by_side.md").write_text(text + "\n")
    print(f"\n({time.time() - t0:.0f} s; magic prime {prime}; logs in {out})\n{text}")


if __name__ == "__main__":
    main()
