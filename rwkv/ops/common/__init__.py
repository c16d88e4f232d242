"""Pieces shared by the ops: backend names and the dispatch check."""

from skein.rwkv.ops.common.backend import (
    BACKENDS,
    RENAMED,
    Backend,
    check_backend_name,
    resolve_backend,
)

__all__ = ["BACKENDS", "RENAMED", "Backend", "check_backend_name", "resolve_backend"]
