"""The C heap of a process that runs a detector on the CPU (glibc's malloc; no-ops elsewhere).

A CPU window's buffers are large and short-lived (a window image, its float32 batch, the FPN maps,
the RoI features, ONNX Runtime's activations), allocated and freed by several threads (the reader,
the trunk's, PyTorch's). glibc gives each thread that allocates at once a heap of its own, up to
eight per core, and a heap keeps what is freed in it: the process's resident memory climbs above its
live set. ``tune_heap_for_cpu`` keeps the heaps few; ``release_free_heap`` gives back what they
still hold after each batch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENA_MAX = 2


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``malloc_trim`` and ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


def is_glibc() -> bool:
    return _glibc() is not None


def release_free_heap() -> None:
    """Give the heap memory freed by a CPU forward pass back to the operating system.

    Trimming after each batch costs milliseconds (against a second or more per CPU forward) and
    lowered the light model's peak by ~110 MB (tools/bench_engine.py, 16384 px scene).
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def tune_heap_for_cpu() -> None:
    """At most ``ARENA_MAX`` heaps for the threads of this process from now on, set once.

    ``tools/bench_cpu.py --detect --size 16384`` with the int8 trunk, two runs each on the idle
    machine (2026-12-07): 880 and 881 MB peak RSS with it, 899 and 906 MB without, the same time.
    (Sending every buffer of 1 MB or more to its own mapping as well took 12 MB more off the peak and
    added 10 % to the time, in page faults: not done.)
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
