"""Pieces shared by the ops: backend names and the dispatch check."""

from skein.rwkv.ops.common.backend import BACKENDS, Backend, resolve_backend

__all__ = ["BACKENDS", "Backend", "resolve_backend"]
