"""Generation speed on the CPU: `skein generate`'s loop (prompt through the parallel form, then one
RNN step per token) against the official `rwkv` pip package on the same RWKV-LM .pth.

    python scripts/bench_generate.py --arch rwkv7 --n_layer 12 --d_model 768 --threads 1

Both sides use the same number of CPU threads, float32, and draw every token with top-p sampling.
The `rwkv` package runs in a subprocess outside the repository (whose rwkv/ folder would shadow it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from skein.rwkv import build_model
from skein.rwkv.convert import to_rwkv_lm
from skein.train.commands.export import load_source
from skein.train.commands.generate import sample_tokens

OFFICIAL = r"""
import json, os, sys, time
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "rwkv", "models"))]
import torch
arch, path, threads, prompt, new_tokens, top_p = json.loads(sys.argv[1])
torch.set_num_threads(threads)
from rwkv.model import RWKV
model = RWKV(path[:-4], strategy="cpu fp32") if arch == "rwkv7" else RWKV(path[:-4], strategy="cpu fp32", verbose=False)
g = torch.Generator().manual_seed(0)

def draw(logits):
    probs = torch.softmax(logits.float(), -1)
    p, order = torch.sort(probs, descending=True)
    p[torch.cumsum(p, -1) - p >= top_p] = 0
    return int(order[torch.multinomial(p / p.sum(), 1, generator=g)])

with torch.no_grad():
    model.forward(prompt[:4], None)  # warm-up (TorchScript compiles on the first calls)
    t0 = time.perf_counter()
    out, state = model.forward(prompt, None)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        out, state = model.forward([draw(out)], state)
    t2 = time.perf_counter()
print(json.dumps({"prompt_s": t1 - t0, "step_s": (t2 - t1) / new_tokens}))
"""


def bench_skein(pth: Path, prompt: list[int], new_tokens: int, top_p: float, kernel: str) -> dict[str, float]:
    """Seconds for the prompt pass, and per generated token of sample_tokens (what generate runs):
    the time of N tokens minus the time of 1 token (prompt pass + one draw), over N - 1."""
    model = load_source(str(pth)).model
    for module in model.modules():
        if hasattr(module, "kernel"):
            module.kernel = kernel
    sample_tokens(model, prompt[:4], 2, 1.0, top_p, seed=0)  # warm-up
    times = []
    for n in (1, new_tokens):
        t0 = time.perf_counter()
        sample_tokens(model, prompt, n, 1.0, top_p, seed=0)
        times.append(time.perf_counter() - t0)
    return {"prompt_s": times[0], "step_s": (times[1] - times[0]) / (new_tokens - 1)}


def bench_official(arch: str, pth: Path, prompt: list[int], args: argparse.Namespace) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(args.threads), RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    if arch == "rwkv7":
        env["RWKV_V7_ON"] = "1"
    spec = json.dumps([arch, str(pth), args.threads, prompt, args.tokens, args.top_p])
    res = subprocess.run(
        [sys.executable, "-c", OFFICIAL, spec], cwd=pth.parent, env=env, capture_output=True, text=True
    )
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=["rwkv4", "rwkv7"], nargs="+", default=["rwkv4", "rwkv7"])
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--d_model", type=int, default=768)
    p.add_argument("--vocab_size", type=int, default=65536)
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    p.add_argument("--tokens", type=int, default=64, help="generated tokens")
    p.add_argument("--top_p", type=float, default=0.85)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kernel", nargs="+", default=["parallel", "naive"], help="skein backends to time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"L{args.n_layer}-D{args.d_model}, vocab {args.vocab_size}, fp32, {args.threads} thread(s), "
        f"prompt {args.prompt} tokens, {args.tokens} generated"
    )
    print(f"{'model':8} {'implementation':26} {'prompt tok/s':>13} {'generate tok/s':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            torch.manual_seed(0)
            model = build_model(
                {
                    "arch": arch,
                    "n_layer": args.n_layer,
                    "d_model": args.d_model,
                    "vocab_size": args.vocab_size,
                }
            )
            with torch.no_grad():
                for prm in model.parameters():
                    prm.add_(torch.randn_like(prm) * 0.02)
            pth = Path(tmp) / f"{arch}.pth"
            torch.save(to_rwkv_lm(model), pth)
            del model
            prompt = torch.randint(
                0, args.vocab_size, (args.prompt,), generator=torch.Generator().manual_seed(0)
            )
            rows = [
                (f"skein ({k})", bench_skein(pth, prompt.tolist(), args.tokens, args.top_p, k))
                for k in args.kernel
            ]
            rows.append(("rwkv 0.8.32 (cpu fp32)", bench_official(arch, pth, prompt.tolist(), args)))
            for name, r in rows:
                print(f"{arch:8} {name:26} {args.prompt / r['prompt_s']:13.1f} {1 / r['step_s']:15.1f}")


if __name__ == "__main__":
    main()
