"""The package's layering rules: rwkv/ stays single-device PyTorch, and pyproject lists every
package folder so installs ship all of it."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_RWKV = ("lightning", "pytorch_lightning", "deepspeed", "wandb", "skein.train", "skein.data")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_rwkv_imports_no_trainer_code() -> None:
    bad = []
    for path in (ROOT / "rwkv").rglob("*.py"):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_RWKV):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_bare_rwkv_import() -> None:
    """`rwkv` is the official inference package; our code imports skein.rwkv."""
    bad = []
    for top in ("rwkv", "train", "data", "scripts"):
        for path in (ROOT / top).rglob("*.py"):
            for name in _imports(path):
                if name == "rwkv" or name.startswith("rwkv."):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_pyproject_lists_every_package() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for ns, folder in cfg["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([ns, *rel.parts]))
    assert found == listed, (
        f"missing from pyproject: {sorted(found - listed)}; stale: {sorted(listed - found)}"
    )
