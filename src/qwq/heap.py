"""Handing freed heap pages back to the system while a model loads (glibc keeps them otherwise)."""

from __future__ import annotations

import ctypes
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system: the float copies that quantization and dtype conversion
    free while loading would otherwise stay resident (glibc keeps them for reuse) and lift the peak."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
