"""glibc malloc settings for training on CPU.

Each training step allocates and frees the same large activation / logits temporaries. With glibc's defaults, blocks
above the (dynamic) mmap threshold are mmapped and unmapped on every step and freed heap tops are trimmed back to
the OS, so the pages are faulted in again on the next step (about 0.7M page faults per step for TRL's LM head on a
70M model, issue 7). Raising the mmap threshold to its maximum and the trim threshold far above one step's working
set keeps those pages in the process.
"""

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2, which is 32 MiB on 64-bit builds.
MAX_MMAP_THRESHOLD = 32 * 1024**2
TRIM_THRESHOLD = 1024**3

_applied: bool | None = None


def tune_malloc() -> bool:
    """Applies the settings once per process; a no-op returning False where the C library is not glibc.

    Returns:
        Whether glibc accepted both settings.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return _applied
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    logger.info(
        "glibc malloc tuned (mmap threshold %d MiB, trim threshold 1 GiB): %s", MAX_MMAP_THRESHOLD >> 20, _applied
    )
    return _applied
