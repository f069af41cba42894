"""``ahead``: an iterator on its own thread, in order, errors raised to the consumer, stopped on close."""

from __future__ import annotations

import threading
import time

import pytest

from serving.engine.ahead import ahead


def test_items_in_order_produced_on_another_thread():
    threads = set()

    def source():
        for i in range(20):
            threads.add(threading.current_thread().name)
            yield i

    assert list(ahead(source(), depth=3, name="t-ahead")) == list(range(20))
    assert threads == {"t-ahead"}


def test_runs_at_most_depth_ahead():
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    it = ahead(source(), depth=2)
    assert next(it) == 0
    time.sleep(0.3)
    # consumed 1; 2 wait in the queue, 1 waits to be put: never more
    assert len(produced) <= 1 + 2 + 1
    it.close()


def test_an_error_in_the_source_is_raised_in_the_consumer():
    def source():
        yield 1
        raise OSError("disk gone")

    it = ahead(source())
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)


def test_closing_stops_the_thread_and_frees_the_source():
    def source():
        i = 0
        while True:
            yield i
            i += 1

    src = source()
    it = ahead(src, depth=1, name="t-stop")
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert not any(t.name == "t-stop" for t in threading.enumerate())
    src.close()  # not running on the thread any more: closing it does not raise


def test_a_source_left_early_is_closed_in_its_own_thread_before_ahead_returns():
    """Its ``finally`` (a GDAL environment, in the engine) runs in the producing thread, at once, not
    later in whatever thread the garbage collector runs in (an interrupted batch printed tracebacks)."""
    closed_in: list[str] = []

    def source():
        try:
            yield from range(100)
        finally:
            closed_in.append(threading.current_thread().name)

    items = ahead(source(), depth=1, name="producer")
    assert next(items) == 0
    items.close()
    assert closed_in == ["producer"]
