"""Typed dataclasses from YAML mappings: every value checked against its annotation (numbers,
bools, strings, Literal choices, optionals, lists, tuples, nested dataclasses, tagged unions),
unknown keys rejected with a suggestion, and `dotted.key=value` overrides applied to the mapping
first. Errors name the full key: `stages[0].micro_bsz: expected an integer, got 'four'`.

A tagged union is a dataclass base with a class attribute `variant_key` (the tag field, e.g.
`arch`) and a classmethod `variants()` returning {tag: subclass}; the mapping's tag picks the
subclass, which is then loaded like any other dataclass."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


def _describe(tp: Any) -> str:
    """A type annotation in a user's words: `selective or true or false`, `an integer or null`."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(str(a) for a in typing.get_args(tp))
    names = {bool: "true or false", type(None): "null", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Coerce/check one value against a type annotation; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
        expected = " or ".join(_describe(option) for option in typing.get_args(tp))
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        # YAML reads `precision: 32` as a number where the choice is the string "32"
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and str(value) in typing.get_args(tp)
        ):
            return str(value)
        raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
    if is_dataclass(tp):
        return from_dict(_variant(tp, value, key), value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_check_type(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp in (float, int) and isinstance(value, str):
        value = _number(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _number(text: str) -> float | str:
    """YAML 1.1 reads 6e-4 and 5e9 (no dot) as strings; take them as the numbers they spell."""
    try:
        return float(text.replace("_", ""))
    except ValueError:
        return text


def _variant(tp: type, value: Any, key: str) -> type:
    """The subclass a tagged-union mapping selects (tp itself when tp is no tagged union)."""
    tag = getattr(tp, "variant_key", None)
    if tag is None or not isinstance(value, dict):
        return tp
    variants = tp.variants()
    if tag not in value:
        raise ConfigError(f"{key}.{tag}: missing (one of {sorted(variants)})")
    if value[tag] not in variants:
        raise ConfigError(f"{key}.{tag}: {value[tag]!r} is not one of {sorted(variants)}")
    return variants[value[tag]]


def from_dict(cls: type, d: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by name."""
    where = prefix or "config"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    # a class whose annotations name a type imported only when needed resolves them itself
    hints = cls.type_hints() if hasattr(cls, "type_hints") else typing.get_type_hints(cls)
    check_keys(d, [f.name for f in fields(cls)], prefix)
    kwargs = {}
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in d:
            kwargs[f.name] = _check_type(d[f.name], hints[f.name], key)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{key}: missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a range check in __post_init__
        raise ConfigError(str(e)) from e


check_type = _check_type
"""Check (and coerce) one value against a type annotation, naming `key` in the error."""


def check_keys(d: dict[str, Any], names: list[str], prefix: str = "") -> None:
    """Refuse the first key of `d` that is not in `names`, suggesting the closest name."""
    for key in d:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {names}"
            raise ConfigError(f"{prefix + '.' if prefix else ''}{key}: unknown key{hint}")


def apply_override(d: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=value` override (value parsed as YAML; list items by index)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. optim.lr_init=3e-4")
    path, raw = override.split("=", 1)
    value = yaml.safe_load(raw)
    keys = path.split(".")
    node: Any = d
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ConfigError(
                    f"override {override!r}: {'.'.join(keys[: i + 1])} is not a valid list index"
                )
            node = node[int(k)]
        else:
            node = node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {override!r}: {path} is not a valid list index")
        node[int(last)] = value
    else:
        node[last] = value


def plain(x: Any) -> Any:
    """Tuples turned into lists, recursively, so a config dumps as plain YAML/JSON."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x
