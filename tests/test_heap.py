"""The C heap of a CPU detector's process (``hbdnet.heap``)."""

import subprocess
import sys

import pytest

from hbdnet.heap import ARENA_MAX, is_glibc

# Eight threads allocate at once and report how many heaps glibc has then (malloc_info's XML).
_COUNT_HEAPS = """
import ctypes, ctypes.util, os, sys, tempfile, threading
from hbdnet.heap import tune_heap_for_cpu
if sys.argv[1] == "tuned":
    tune_heap_for_cpu()
barrier = threading.Barrier(9)
def work():
    held = bytearray(2**16)
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
barrier.wait()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = os.path.join(tempfile.mkdtemp(), "heaps.xml")
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
barrier.wait()
print(open(path).read().count("<heap nr="))
"""


@pytest.mark.skipif(not is_glibc(), reason="mallopt is glibc's")
def test_threads_of_a_cpu_detectors_process_share_at_most_two_heaps():
    """Threads that allocate at once (the reader, the trunk's, PyTorch's) share ``ARENA_MAX`` heaps
    instead of one each, where freed memory would stay apart in each."""
    def heaps(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _COUNT_HEAPS, mode], capture_output=True, text=True,
                             check=True, timeout=60)
        return int(out.stdout)

    assert heaps("untuned") > ARENA_MAX  # the count itself works: glibc's default gives more
    assert heaps("tuned") <= ARENA_MAX
