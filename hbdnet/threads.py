"""Light tensor work on one CPU thread."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the block's torch operations on one CPU thread (nothing changes for other devices).

    For many small operations (NMS, proposal selection, anchors) a second thread gains little, and each
    operation waits for all its threads: on a busy machine, where a thread is often descheduled, two
    threads made such steps 4 to 10 times slower than one (``tools/bench_window.py``).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
