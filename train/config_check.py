"""A first check of a run config that imports no torch, so that the CLI answers a typo in a
config or an override at once: every section but `model` is validated as `load_config` validates
it; the model section's architecture, keys and value types are checked against the fields its
architecture's config dataclass declares in its source (read with `ast`, as cli_args reads
signatures). The checks that need the model classes (their ranges, and those across sections)
follow in `load_config` when the command runs.
"""

from __future__ import annotations

import ast
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from skein.train.cli_args import module_tree
from skein.train.config import RunConfig, located, read_config
from skein.train.typed import ConfigError, check_keys, check_type

REGISTRY = "skein.rwkv.models.registry"
"""The module whose `MODELS` maps an architecture to (module, config class, model class)."""

_TYPES = {"Literal": Literal, "int": int, "float": float, "str": str, "bool": bool, "None": None}
_TYPES.update({"list": list, "tuple": tuple, "dict": dict, "Any": Any})


def check_config(path: str | Path | None, overrides: list[str] | None = None) -> None:
    """Raise the ConfigError that `load_config(path, overrides)` would raise for a missing file, a
    bad override, an unknown key or a value of the wrong type; pass what only the model classes
    can judge."""
    d = read_config(path, overrides)
    hints = typing.get_type_hints(RunConfig, localns={"ModelConfig": Any})
    try:
        check_keys(d, [f.name for f in fields(RunConfig)])
        for f in fields(RunConfig):
            if f.name == "model":
                _check_model(d.get("model"))
            elif f.name in d:
                check_type(d[f.name], hints[f.name], f.name)
    except ConfigError as e:
        raise located(e, path, overrides) from e


def _check_model(value: Any) -> None:
    if value is None:
        raise ConfigError("model: missing")
    archs = architectures()
    if not isinstance(value, dict) or archs is None:
        return
    if "arch" not in value:
        raise ConfigError(f"model.arch: missing (one of {sorted(archs)})")
    if value["arch"] not in archs:
        raise ConfigError(f"model.arch: {value['arch']!r} is not one of {sorted(archs)}")
    declared = declared_fields(*archs[value["arch"]])
    if declared is None:
        return
    check_keys(value, list(declared), "model")
    for name, annotation in declared.items():
        if name in value and annotation is not None:
            check_type(value[name], annotation, f"model.{name}")


def architectures() -> dict[str, tuple[str, str]] | None:
    """arch -> (module, config class name), from the registry's source; None if it cannot be read."""
    tree = module_tree(REGISTRY)
    for node in tree.body if tree is not None else []:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "MODELS" for t in targets):
                try:
                    return {
                        arch: (module, cls) for arch, (module, cls, _) in ast.literal_eval(node.value).items()
                    }
                except (ValueError, TypeError):
                    return None
    return None


def declared_fields(module: str, name: str) -> dict[str, Any] | None:
    """Field name -> type (None where the annotation is not a plain type) of the dataclass `name`
    in `module` and its bases, bases first, as the source declares them; None when the class or a
    base cannot be found."""
    tree = module_tree(module)
    if tree is None:
        return None
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if node is None:
        return None
    out: dict[str, Any] = {}
    for base in node.bases:
        if not isinstance(base, ast.Name):
            return None
        inherited = declared_fields(_imported_from(tree, base.id) or module, base.id)
        if inherited is None:
            return None
        out.update(inherited)
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            text = ast.unparse(item.annotation)
            if not text.startswith(("ClassVar", "typing.ClassVar")):
                out[item.target.id] = _annotation(text)
    return out


def _imported_from(tree: ast.Module, name: str) -> str | None:
    for node in tree.body:
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and any((a.asname or a.name) == name for a in node.names)
        ):
            return node.module
    return None


def _annotation(text: str) -> Any:
    try:
        # what typing.get_type_hints does with a string annotation, over plain type names only
        return eval(text, {"__builtins__": {}}, _TYPES)
    except Exception:
        return None
