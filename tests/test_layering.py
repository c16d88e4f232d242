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


# The trainer's rooms (docs/architecture.md).
MAX_TRAIN_TOP_LEVEL = 12
ENGINE_ROOM = ROOT / "train" / "parallel"


def _package_dirs() -> dict[str, Path]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {ns: ROOT / folder for ns, folder in cfg["package-dir"].items()}


def _skein_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the skein namespace."""
    out = {}
    for ns, folder in _package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([ns, *parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The skein modules a file imports anywhere (module level or inside functions), except under
    `if TYPE_CHECKING:`; `from a.b import c` counts a.b.c when that is a module, else a.b."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules}


def test_train_top_level_holds_few_modules() -> None:
    top = sorted(p.name for p in (ROOT / "train").glob("*.py"))
    assert len(top) <= MAX_TRAIN_TOP_LEVEL, f"train/ holds {len(top)} modules at its top level: {top}"


def test_only_the_parallel_layer_names_the_engine() -> None:
    """At most two modules of train/ import or name DeepSpeed (the raw source text, docstrings and
    comments included, case-insensitive), and both are in train/parallel/."""
    naming = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "train").rglob("*.py")
        if "deepspeed" in p.read_text().lower()
    )
    assert len(naming) <= 2, f"DeepSpeed is named in {naming}"
    assert all((ROOT / p).is_relative_to(ENGINE_ROOM) for p in naming), naming


def test_no_import_cycles() -> None:
    modules = _skein_modules()
    graph = {name: _imported_modules(path, modules) - {name} for name, path in modules.items()}
    done: set[str] = set()
    cycles = []

    def walk(name: str, stack: list[str]) -> None:
        if name in stack:
            cycles.append(" -> ".join([*stack[stack.index(name) :], name]))
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            walk(target, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _arch_names() -> set[str]:
    from skein.rwkv.models import MODELS

    return set(MODELS)


def _names_in(node: ast.AST, names: set[str]) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & names
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_names_in(e, names) for e in node.elts)) if node.elts else set()
    return set()


def test_train_never_branches_on_an_architecture_name() -> None:
    """No comparison under train/ against an architecture's name (`arch == "rwkv7"`, `arch in
    ("rwkv4", ...)`): what differs between architectures is a trait of their classes."""
    names = _arch_names()
    assert {"rwkv4", "rwkv7", "deltaproduct", "llama"} <= names
    bad = []
    for path in (ROOT / "train").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                hit = set().union(*(_names_in(n, names) for n in (node.left, *node.comparators)))
                if hit:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with {sorted(hit)}")
            elif isinstance(node, ast.MatchValue) and _names_in(node.value, names):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} matches {ast.unparse(node.value)}")
    assert not bad, "\n".join(bad)
