"""The default corpus of `prepare`: the Python standard library's own .py source files.

Every Python install has it, so the demo runs with no download. Files are taken in sorted order of
their path relative to `sysconfig.get_paths()["stdlib"]` (site-packages and dist-packages left
out), each file one document, skipping any file that would take the total past `max_bytes`, until
the files run out or the cap is reached. Files that are not valid UTF-8 (a few encoding test
fixtures) are skipped too. The corpus differs
between Python versions; `describe()` records which one was used.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path

DEFAULT_MAX_BYTES = 4_000_000
SKIPPED_DIRS = ("site-packages", "dist-packages", "__pycache__")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Every .py file of the standard library, sorted by relative path."""
    root = stdlib_root()
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        files.extend(Path(folder, n) for n in names if n.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def stdlib_documents(max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[str, str]]:
    """Yield (relative path, text) per file, in order, skipping files that would pass max_bytes."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    root, total = stdlib_root(), 0
    for path in stdlib_files():
        if total + path.stat().st_size > max_bytes:
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        total += len(text.encode("utf-8"))
        yield path.relative_to(root).as_posix(), text
        if total == max_bytes:
            return


def describe(max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """One line naming the corpus, for the meta file."""
    return f"stdlib:{stdlib_root()} (Python {platform.python_version()}, max_bytes={max_bytes})"
