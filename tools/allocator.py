"""glibc malloc settings for steady CPU performance.

With glibc's default *dynamic* mmap threshold, large tensor buffers (a few MB) are often
served by fresh ``mmap`` calls and returned on free, so every call page-faults its
temporaries in again, and how often depends on the process's allocation history. Measured
here: an energy+forces call of a 50-atom molecule took 22 ms with the defaults, 14 ms with
fixed thresholds; after ``torch.export`` (inside ``optimize``) the same call took 33 ms with
the defaults. Fixing the mmap and trim thresholds (what ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` do) removes both effects. The ``painnfx`` command applies this at
start unless the user set either variable (glibc's own settings then stand). A library import
never changes it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 256 * 2**20


def tune_malloc(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap/trim thresholds; False if not glibc or the user set them (``MALLOC_*_THRESHOLD_``)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
