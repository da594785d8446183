"""What the process does with memory it frees during training (``dgmeta run --memory``).

glibc's malloc hands every allocation above 32 MiB to the kernel as a fresh ``mmap`` and
returns it with ``munmap`` when freed, and gives the top of its heap back once more than
128 KiB lie free there. A training step allocates and frees its activations every time, so every
step the kernel maps, zero-fills and unmaps them again: on EfficientNet-Lite0 (96 images,
128 px) about 600,000 page faults and 1.4 s of kernel CPU time per step of 2.3 s
(``benchmarks/speed/allocator.py``).

* ``lean`` (default): glibc's defaults; the process's footprint follows what is alive.
* ``fast``: no ``mmap`` for large blocks and no trimming below 256 MiB of free heap top, so freed
  activations stay mapped and the next step mostly reuses them without page faults (75k instead
  of 608k per ERM step in ``benchmarks/speed/allocator.py``: now and then the heap top crosses the
  threshold and a block goes back). Faster steps, at the price of keeping the memory the heap has fragmented into (peak RSS up by a few hundred
  MiB on a PACS run; figures in benchmarks/README.md).

The setting is process-wide and stays for the life of the process (it is meant for the process
that trains). On a platform without glibc ``fast`` has no effect and says so once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from dgmeta.errors import ConfigError

MODES = ("lean", "fast")
# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: free heap top (bytes) that ``fast`` still returns to the OS: more than the activations of a
#: step need to be reused, so a run that shrinks for good (evaluation after training) gives back
#: what lies beyond
FAST_TRIM_THRESHOLD = 256 * 2**20

log = logging.getLogger(__name__)


def check_memory_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown --memory {mode!r}", "choose lean (return freed memory to the OS) or fast (keep it for reuse)")
    return mode


def configure_allocator(mode: str) -> bool:
    """Apply ``mode`` to this process; True if the C allocator was changed."""
    if check_memory_mode(mode) == "lean":
        return False
    mallopt = _mallopt()
    if mallopt is None:
        log.warning("--memory fast needs glibc's mallopt, which this platform lacks; memory is handled as with --memory lean")
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, FAST_TRIM_THRESHOLD))


def _mallopt():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
