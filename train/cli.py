"""The `skein` command: each subcommand is one function in data/, train/ or rwkv/."""

from __future__ import annotations

import sys


def params(config: str) -> None:
    """Print the parameter count of the model a run config (or model-only YAML) describes.

    Args:
        config: path to a YAML file with a `model:` section (or the model keys at top level).
    """
    import yaml

    from skein.rwkv import build_model

    with open(config) as f:
        d = yaml.safe_load(f)
    model_cfg = d.get("model", d)
    model = build_model(model_cfg)
    n, n_emb = model.num_params(), model.emb.weight.numel()
    print(f"{model_cfg['arch']}: {n:,} parameters ({n - n_emb:,} without the input embedding)")


COMMANDS = {"params": params}


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import auto_cli

    auto_cli(COMMANDS, args=sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
