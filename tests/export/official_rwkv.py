"""Runs a .pth through the official `rwkv` pip package and saves its logits; executed by the export
tests in a subprocess whose working directory is not the repository, because the repository's
rwkv/ folder would shadow the package.

    python official_rwkv.py ARCH MODEL.pth TOKENS.pt OUT.pt

OUT.pt holds {"seq": [T, V] logits of one forward over the tokens (full_output),
              "rnn": [T, V] logits of one forward per token with the state carried}.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _drop_repository_paths() -> None:
    """Remove sys.path entries that hold skein's own rwkv/ folder (e.g. the repository root)."""
    sys.path[:] = [p for p in sys.path if not (Path(p or ".").resolve() / "rwkv" / "models").is_dir()]


def main() -> None:
    arch, model_path, tokens_path, out_path = sys.argv[1:5]
    if arch == "rwkv7":
        os.environ["RWKV_V7_ON"] = "1"  # the package's RWKV-7 class replaces RWKV only with this set
    _drop_repository_paths()
    import torch
    from rwkv.model import RWKV

    package = Path(sys.modules["rwkv"].__file__).resolve().parent
    if (package / "models").is_dir():
        raise RuntimeError(f"imported {package}, the repository's rwkv/, instead of the official package")
    name = model_path[: -len(".pth")]  # both loaders append .pth
    model = (
        RWKV(name, strategy="cpu fp32") if arch == "rwkv7" else RWKV(name, strategy="cpu fp32", verbose=False)
    )
    tokens = torch.load(tokens_path).tolist()
    seq, _ = model.forward(tokens, None, full_output=True)
    state, steps = None, []
    for t in tokens:
        out, state = model.forward([t], state)
        steps.append(out.clone())
    torch.save({"seq": seq.float(), "rnn": torch.stack(steps).float(), "package": str(package)}, out_path)


if __name__ == "__main__":
    main()
