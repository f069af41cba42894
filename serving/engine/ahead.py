"""Run an iterator on a thread of its own, a few items ahead of the code that consumes it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def ahead(source: Iterable[T], depth: int = 1, name: str = "hbdnet-ahead") -> Iterator[T]:
    """``source``'s items, produced on a thread up to ``depth`` items ahead of the consumer.

    An exception raised by ``source`` is raised in the consumer. Closing the returned generator (or
    dropping out of a loop over it, or an exception such as Ctrl-C's in the consumer) stops the thread
    after the item it is producing, closes ``source`` there and waits for it: a generator is closed in
    the thread that ran it, where its context managers were entered (GDAL's environment is per
    thread), not later by the garbage collector in another thread.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    items = iter(source)

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while (got := q.get()) is not done:
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
