"""Opening submitted remote scenes on a bounded pool of their own.

The check before a 202 opens the client's URL. A server that accepts the connection and never
answers held each check for good, on the thread pool that also runs the synchronous routes, until
``/healthz`` stopped answering. Here the checks run on ``limit`` threads of their own (GDAL's HTTP
timeouts end each one, ``serving.engine.scene.HttpLimits``) and a submission that finds ``limit``
checks in flight is refused at once (429) instead of queueing behind them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ChecksBusy(Exception):
    """``limit`` checks are in flight."""


class SceneChecks:
    def __init__(self, limit: int):
        self.limit = limit
        self.busy = 0  # only touched on the event loop's thread
        self._pool = ThreadPoolExecutor(limit, thread_name_prefix="hbdnet-check")

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the pool; ``ChecksBusy`` at once when ``limit`` are running."""
        if self.busy >= self.limit:
            raise ChecksBusy()
        self.busy += 1
        try:
            return await asyncio.wrap_future(self._pool.submit(fn))
        finally:
            self.busy -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
