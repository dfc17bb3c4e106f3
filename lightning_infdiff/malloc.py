"""glibc's malloc thresholds pinned for the training and sampling processes.

glibc raises its mmap threshold each time a large mmapped block is freed, and trims the heap when
its free top exceeds the trim threshold. Which of a step's buffers are then served from pages
already mapped, and which are mapped afresh (a minor fault, and a zeroed 4 KiB page, per page
first touched), depends on what the process allocated before: a training or sampling loop can
fault in fresh pages on every step. Fixing both thresholds (``mallopt(3)``; setting either turns
the dynamic adjustment off) keeps freed buffers in the heap for reuse. ``infdiff`` and
``make train`` call :func:`pin_malloc` at start, and so does every benchmark
(``benchmarks/harness.py``), so that a step's cost does not depend on the process's history;
``LIGHTNING_INFDIFF_MALLOC=system`` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["pin_malloc", "M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "PINNED_MMAP_THRESHOLD", "PINNED_TRIM_THRESHOLD"]

#: glibc ``mallopt`` parameters (``malloc.h``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit (``HEAP_MAX_SIZE / 2``) and a trim threshold
#: far above any step's working set
PINNED_MMAP_THRESHOLD, PINNED_TRIM_THRESHOLD = 32 << 20, 1 << 30


def pin_malloc(respect_env: bool = False) -> dict:
    """Fix glibc's mmap and trim thresholds; returns what was set, or why nothing was.

    Args:
        respect_env: leave the defaults when ``LIGHTNING_INFDIFF_MALLOC=system`` (the entry points
            pass True; benchmarks pin unconditionally).
    """
    if respect_env and os.environ.get("LIGHTNING_INFDIFF_MALLOC", "").lower() == "system":
        return {"pinned": False, "why": "LIGHTNING_INFDIFF_MALLOC=system"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as err:
        return {"pinned": False, "why": f"no glibc mallopt: {err}"}
    ok_mmap = bool(mallopt(M_MMAP_THRESHOLD, PINNED_MMAP_THRESHOLD))
    ok_trim = bool(mallopt(M_TRIM_THRESHOLD, PINNED_TRIM_THRESHOLD))
    return {"pinned": ok_mmap and ok_trim, "mmap_threshold": PINNED_MMAP_THRESHOLD if ok_mmap else None,
            "trim_threshold": PINNED_TRIM_THRESHOLD if ok_trim else None}
