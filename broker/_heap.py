"""Keeping the bridge's resident set flat: one malloc arena, and freed heap given back.

Why: when a peer is down for a few seconds at 1,000 msg/s, thousands of envelopes (and their
rows, batches and log records) are alive at once; once the peer is back they are delivered
and freed, but glibc keeps most of the freed pages in its arenas for later, so the bridge's
resident set steps up after every backlog and never comes down.  ``bench/soak.py`` measured
that step: about 9% over ten minutes of peers killed each minute, with Python's own live
objects flat.  ``malloc_trim(0)`` hands the free pages of every arena back (``madvise``), and
costs well under a millisecond on a heap of this size.

glibc also gives each thread that allocates under contention an arena of its own, and each
arena keeps its own free pages: ``bench/soak.py`` saw the growth in those thread arenas (the
main heap and Python's own 1 MiB arenas stayed flat).  :func:`use_one_arena` (called once at
start, before the bridge's threads exist) sets ``M_ARENA_MAX`` to 1: the bridge's threads
allocate under the GIL almost always, so they hardly contend for one arena, and the soak's
growth after minute 1 went from 6.4% to 4.9% (10-minute runs, with the trim).  An operator's
own ``MALLOC_ARENA_MAX`` in the environment wins.

Only glibc has these: on another C library (musl, macOS) both functions do nothing and say so
once at debug level.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("junction.heap")

#: How often the bridge returns free heap to the system (``Runtime`` runs it on its loop).
TRIM_EVERY_S = 30.0


#: glibc's ``mallopt`` parameter number for the most arenas (malloc.h: ``M_ARENA_MAX``).
_M_ARENA_MAX = -8


def _libc_function(name: str, *argtypes: Any) -> Callable[..., int] | None:
    libc = ctypes.util.find_library("c")
    if libc is None:
        return None
    try:
        function = getattr(ctypes.CDLL(libc), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_malloc_trim = _libc_function("malloc_trim", ctypes.c_size_t)
_mallopt = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
if _malloc_trim is None or _mallopt is None:
    log.debug("no malloc_trim / mallopt in this C library: freed heap stays with the process")


def use_one_arena() -> bool:
    """Have every thread allocate from glibc's main arena (unless ``MALLOC_ARENA_MAX`` is
    set); True if it was set here."""
    if _mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(_mallopt(_M_ARENA_MAX, 1))


def release_free_heap() -> bool:
    """Return the heap's free pages to the system; True if any were (False without glibc)."""
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
