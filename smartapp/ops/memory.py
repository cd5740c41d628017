"""Keep a long-running worker's memory flat under glibc's allocator (no Flask).

Two glibc defaults make a threaded worker's resident memory creep for hours without any leak:
each thread may get its own malloc arena (up to 8 per core), and memory freed in one arena is
not reused by the others; and after a large block is freed, the threshold above which blocks
are mmap'ed (and so returned to the system when freed) rises up to 32 MiB, so later large
buffers (FHIR Bundles, JSON bodies) stay on the heap and fragment it. gunicorn's master calls
`tune_allocator` before it forks, and the workers inherit the settings.

An operator's own `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` in the environment win. Where
the C library is not glibc (macOS, musl) nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# From glibc's malloc.h.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
# glibc's own starting value; setting it fixes it (no dynamic rise).
MMAP_THRESHOLD_BYTES = 128 * 1024


def glibc() -> bool:
    """Whether this process runs on glibc (asked of the C library itself, no file read)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a name this C library knows
        return False


def tune_allocator() -> dict[str, int]:
    """Cap malloc arenas and fix the mmap threshold; returns what was set (empty: nothing)."""
    if not glibc():
        return {}
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return {}
    wanted = {
        "MALLOC_ARENA_MAX": (M_ARENA_MAX, ARENAS),
        "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    }
    applied = {}
    for variable, (option, value) in wanted.items():
        if variable in os.environ:
            continue
        if mallopt(option, value) == 1:  # mallopt returns 1 on success
            applied[variable] = value
    if applied:
        log.info("allocator tuned: %s", applied)
    return applied
