"""Command-line parsers built from a function's source, without importing it: the function's
signature (read with `ast`) gives the arguments, its docstring's Args section their help. So
`skein <command> --help` costs no torch or Lightning import; the function is imported only to run.

Arguments without a default are positional; the others are `--name value` options, also spelt
with dashes (`--dry_run` or `--dry-run`). `list[...]` options take one or more values (`--inputs
a.jsonl b.jsonl`, also repeated or as `--inputs+`), bools take `--flag`, `--flag true` or `--flag
false`. A function with a `config` parameter also takes `--config FILE` (LightningCLI's spelling),
and one with an `overrides` parameter takes dotted overrides as `key=value`, `--key value` or
`--key=value`, like every other config command.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `<prog>: error: <message>`, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass
class Param:
    name: str
    annotation: str
    default: Any = None
    required: bool = False


@dataclass
class Signature:
    summary: str
    description: str
    params: list[Param] = field(default_factory=list)
    docs: dict[str, str] = field(default_factory=dict)


def source_file(module: str) -> str | None:
    """The file of a module, found the way `import` finds it but without running any package's
    __init__ (which would import torch)."""
    path, spec = None, None
    parts = module.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path) if find is not None else None
            if spec is not None:
                break
        if spec is None:
            return None
        path = spec.submodule_search_locations
    return spec.origin if spec is not None else None


def module_tree(module: str) -> ast.Module | None:
    """The parsed source of a module (not imported), or None when it has no .py source."""
    path = source_file(module)
    if path is None or not path.endswith(".py"):
        return None
    with open(path) as f:
        return ast.parse(f.read())


def _function_node(target: str) -> ast.FunctionDef | None:
    module, name = target.split(":")
    tree = module_tree(module)
    if tree is None:
        return None
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _constant(expr: str, module: str) -> Any:
    """The value of a default written as a module constant, `NAME` or `module.NAME` (an imported
    module), read from the sources; raises ValueError when it is not such a literal."""
    tree = module_tree(module)
    *owner, name = expr.split(".")
    if tree is not None and len(owner) == 1:
        imported = None
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if (alias.asname or alias.name) == owner[0]:
                        imported = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name) == owner[0]:
                        imported = alias.name
        tree = module_tree(imported) if imported else None
    elif owner:
        tree = None
    for node in tree.body if tree is not None else []:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return ast.literal_eval(node.value)
    raise ValueError(f"{expr} is not a literal constant")


def _for_users(text: str) -> str:
    """A docstring paragraph as help shows it: one line, without what the function returns."""
    text = " ".join(text.split())
    text = re.sub(r";\s*return\b[^.]*\.", ".", text)
    sentences = re.split(r"(?<=\.)\s+", text)
    return " ".join(x for x in sentences if not re.match(r"Returns?\b", x))


def _arg_docs(doc: str) -> dict[str, str]:
    """name -> text of a Google-style Args section (continuation lines joined)."""
    out: dict[str, str] = {}
    section, current = False, None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:"):
            section = True
            continue
        if section and re.fullmatch(r"[A-Z][a-z]+:", stripped):
            break
        m = re.match(r"(\w+): (.*)", stripped)
        if section and m:
            current = m.group(1)
            out[current] = m.group(2)
        elif section and current and stripped:
            out[current] += " " + stripped
    return out


def read_signature(target: str) -> Signature:
    """The signature and docs of "module:function", read from its source (imported only when the
    source cannot be found, e.g. a compiled module)."""
    node = _function_node(target)
    if node is None:
        import inspect

        module, name = target.split(":")
        fn = getattr(importlib.import_module(module), name)
        node = ast.parse(inspect.getsource(fn).lstrip()).body[0]
    doc = ast.get_docstring(node) or ""
    args = node.args.posonlyargs + node.args.args
    defaults = [None] * (len(args) - len(node.args.defaults)) + list(node.args.defaults)
    pairs = list(zip(args, defaults)) + list(zip(node.args.kwonlyargs, node.args.kw_defaults))
    params = []
    for arg, default in pairs:
        annotation = ast.unparse(arg.annotation) if arg.annotation is not None else "Any"
        if default is None:
            params.append(Param(arg.arg, annotation, required=True))
            continue
        try:
            value = ast.literal_eval(default)
        except ValueError:  # a name such as a module constant: read for the help, resolved when run
            value = _Unparsed(ast.unparse(default))
            try:
                value.shown = _constant(value, target.split(":")[0])
            except (ValueError, SyntaxError, TypeError):
                pass
        params.append(Param(arg.arg, annotation, value))
    paragraphs = [_for_users(x) for x in doc.split("Args:")[0].split("\n\n")]
    return Signature(paragraphs[0], "\n\n".join(x for x in paragraphs if x), params, _arg_docs(doc))


UNSET = object()
"""Default of every option: an option not given is left out, so the function's default applies."""


class _Extend(argparse.Action):
    """Values of a list option, over every time it is given."""

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        have = getattr(ns, self.dest, UNSET)
        setattr(ns, self.dest, [*([] if have is UNSET else have), *values])


class _Unparsed(str):
    """A default that is an expression, not a literal: the function's own default applies. `shown`
    is its value where the sources tell it (a module constant)."""

    shown: Any = None


def _shown_default(q: Param, help_text: str) -> str:
    """` [default: X]` for an option's help, in the words a user types; nothing where the default
    is None (the help says what happens) or the help already names its default."""
    value = q.default.shown if isinstance(q.default, _Unparsed) else q.default
    if value is None or re.search(r"\(default\b|\bdefault:", help_text, re.I):
        return ""
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, (list, tuple)):
        value = " ".join(map(str, value))
    return f" [default: {value}]"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """One entry per option: its first spelling only (`--dry_run`, not also `--dry-run`, `--inputs+`)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            return super()._format_action_invocation(action)
        text = action.option_strings[0]
        if action.nargs != 0:
            text += " " + self._format_args(action, self._get_default_metavar_for_optional(action))
        return text


def _yes_no(v: str) -> bool:
    if v.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")
    return v.lower() in ("true", "yes", "1")


def _scalar(annotation: str) -> Any:
    """The argparse `type` of an annotation's non-None part."""
    core = re.sub(r"\s*\|\s*None|None\s*\|\s*", "", annotation).strip()
    return {"int": int, "float": float, "str": str, "bool": _yes_no}.get(core, yaml.safe_load)


def build_parser(prog: str, sig: Signature) -> OneLineParser:
    """An argparse parser for a function signature (see the module docstring). A config command's
    CONFIG.yaml and key=value overrides are positionals that `parse` sorts out itself."""
    names = {q.name for q in sig.params}
    usage = "%(prog)s CONFIG.yaml [key=value | --key value ...] [options]" if "overrides" in names else None
    p = OneLineParser(
        prog=prog,
        usage=usage,
        description=sig.description,
        epilog="Options may also be spelt with dashes (--dry-run for --dry_run).",
        formatter_class=_HelpFormatter,
    )
    for q in sig.params:
        help_text = sig.docs.get(q.name, "")
        # an option not given keeps the function's own default
        keep = {"default": UNSET, "help": help_text + _shown_default(q, help_text)}
        if q.name == "config" and "overrides" in names:
            p.add_argument(
                "--config", dest="config_option", metavar="FILE", help="the run YAML, as an option"
            )
        elif q.name == "overrides":
            continue
        elif q.required:
            p.add_argument(q.name, type=_scalar(q.annotation), help=help_text)
        elif q.annotation.startswith("list["):
            item = _scalar(q.annotation[5 : q.annotation.index("]")])
            flags = [f for name in _spellings(q.name) for f in (name, f"{name}+")]
            p.add_argument(*flags, dest=q.name, type=item, nargs="+", action=_Extend, **keep)
        elif q.annotation == "bool":
            p.add_argument(
                *_spellings(q.name), dest=q.name, type=_yes_no, nargs="?", const=True, metavar="BOOL", **keep
            )
        else:
            p.add_argument(
                *_spellings(q.name), dest=q.name, type=_scalar(q.annotation), metavar=q.name.upper(), **keep
            )
    return p


def _spellings(name: str) -> list[str]:
    """`--dry_run` and `--dry-run` (the spelling of Slurm's and most Unix tools' flags)."""
    return list(dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"]))


def _bare_flags(argv: list[str], sig: Signature) -> list[str]:
    """`--flag` before a word that is not true/false means `--flag=true` (so a bool option never
    swallows the next positional argument)."""
    flags = {f for q in sig.params if q.annotation == "bool" for f in _spellings(q.name)}
    words = {"true", "false", "yes", "no", "1", "0"}
    return [
        f"{a}=true" if a in flags and (i + 1 == len(argv) or argv[i + 1].lower() not in words) else a
        for i, a in enumerate(argv)
    ]


def dashed_overrides(argv: list[str], option_names: set[str]) -> list[str]:
    """LightningCLI-style `--section.key value` / `--section.key=value` as `section.key=value`;
    options the parser knows and every other argument pass through unchanged."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and "." in name and f"--{name}" not in option_names:
            if "=" in arg:
                out.append(arg[2:])
            elif i + 1 < len(argv):
                out.append(f"{name}={argv[i + 1]}")
                i += 1
            else:
                from skein.train.typed import ConfigError

                raise ConfigError(f"{arg} needs a value, e.g. {arg} 3e-4 or {name}=3e-4")
        else:
            out.append(arg)
        i += 1
    return out


def parse(prog: str, sig: Signature, argv: list[str]) -> dict[str, Any]:
    """The keyword arguments of the function for a command line."""
    names = {q.name for q in sig.params}
    if "overrides" not in names:
        ns = vars(build_parser(prog, sig).parse_args(_bare_flags(argv, sig)))
        return {k: v for k, v in ns.items() if k in names and v is not UNSET}
    parser = build_parser(prog, sig)
    argv = dashed_overrides(argv, set(parser._option_string_actions))
    ns, rest = parser.parse_known_args(_bare_flags(argv, sig))
    kwargs = {k: v for k, v in vars(ns).items() if k in names and v is not UNSET}
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    config = ns.config_option
    if config is None and rest and "=" not in rest[0]:
        config, rest = rest[0], rest[1:]
    if config is None and "config" in names:
        parser.error("a run config is needed: CONFIG.yaml or --config CONFIG.yaml")
    bad = [a for a in rest if "=" not in a]
    if bad:
        parser.error(f"{bad[0]!r} is not an override: expected key=value, e.g. optim.lr_init=3e-4")
    if "config" in names:
        kwargs["config"] = config
    return {**kwargs, "overrides": rest}
