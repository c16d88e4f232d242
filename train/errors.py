"""What the CLI says when a command fails: a user's mistake or a damaged file becomes one line
naming the file or key and what to do; anything else is a bug and keeps its traceback.

Mapped: ConfigError (config keys, load-time checks), missing or unreadable files (OSError), and
damaged files as torch, pickle, zip and json report them (truncated or corrupt checkpoints,
a meta.json that is not JSON), damaged binidx shards.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from types import TracebackType

from skein.train.typed import ConfigError

DAMAGED = re.compile(
    r"PytorchStreamReader|unexpected EOF|central directory|Unsupported operand|invalid load key|"
    r"Weights only load failed|truncated|storage has wrong byte size|Ran out of input",
    re.I,
)
"""Messages of a RuntimeError/UnpicklingError/ValueError that torch.load raises on a damaged file."""


def _file_in(tb: TracebackType | None) -> str | None:
    """The file the innermost frame of a traceback was reading: an open file object's name, or a
    local Path/str naming an existing file."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            name = getattr(value, "name", None) if hasattr(value, "read") else value
            if isinstance(name, (str, Path)) and len(str(name)) < 4096 and os.path.isfile(name):
                return str(name)
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def explain(e: BaseException) -> str | None:
    """One line for a failure the user can act on; None for anything else (a bug)."""
    if isinstance(e, ConfigError):
        return str(e)
    where = _file_in(e.__traceback__)
    if isinstance(e, json.JSONDecodeError):
        return (
            f"{where or 'a JSON file'}: not valid JSON ({e.msg} at line {e.lineno}); the file is damaged: "
            "restore it, or delete the checkpoint or shards it belongs to"
        )
    damaged = isinstance(e, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)) or (
        isinstance(e, (RuntimeError, ValueError)) and DAMAGED.search(str(e))
    )
    if damaged:
        return (
            f"{where or 'a checkpoint or weights file'}: damaged or truncated ({_first_line(e)}); delete it "
            "and resume from an earlier checkpoint, or pass --init_from another file"
        )
    from skein.data.binidx import BinIdxError

    if isinstance(e, BinIdxError):
        return f"{e}; run `skein prepare` again for these shards"
    from skein.rwkv.ops.bench import BenchError

    if isinstance(e, BenchError):
        return str(e)
    if isinstance(e, OSError):
        if e.filename is not None:
            return f"{e.filename}: {e.strerror or _first_line(e)}"
        return str(e) or _first_line(e)
    return None
