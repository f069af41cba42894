"""What a job will cost, known before it is accepted: its windows (the pyramid's count,
``serving.engine.window_count``) and the seconds they should take on this server's pool.

A 51 kB sparse GeoTIFF can describe 1.6 gigapixels: thousands of windows, hours of CPU. So the cost is
priced from the scene's size at submission, shown in the job document (``windows.total``,
``timings.estimated``) and refused past the operator's limits (``--max-windows``,
``--max-job-seconds``). Seconds per window are measured: a running mean over this server's finished
jobs (``WindowRate``), started from ``--seconds-per-window`` until the first job has run.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import shapely

from hbdnet.pyramid import plan_pyramid
from serving.engine.aoi import windows_meeting
from serving.engine.reader import window_footprints
from serving.engine.window_count import count_windows

WEIGHT = 0.3  # of a newly finished job in the running mean


class TooCostly(Exception):
    """The job is over a limit; the message says the numbers, for the client."""


@dataclass(frozen=True)
class Cost:
    windows: int
    seconds: float  # estimated


class WindowRate:
    """Seconds per window on this server's pool: ``default`` until ``add`` measures one."""

    def __init__(self, default: float):
        self._lock = threading.Lock()
        self.seconds: float = default
        self.measured = 0  # jobs that went into the figure

    def add(self, seconds: float, windows: int) -> None:
        """A finished job: ``windows`` run through the pool in ``seconds`` of wall time."""
        if windows <= 0 or seconds <= 0:
            return
        with self._lock:
            rate = seconds / windows
            self.seconds = rate if self.measured == 0 else (1 - WEIGHT) * self.seconds + WEIGHT * rate
            self.measured += 1


# Past this many windows the plan is not listed to count those meeting an area of interest: the
# scene's count stands (an upper bound), and the limits refuse it anyway.
MAX_LISTED_WINDOWS = 200_000


def job_cost(height: int, width: int, window: int, overlap: int, rate: WindowRate, *,
             area_px: shapely.Geometry | None = None, levels: Sequence[int] | None = None) -> Cost:
    """The windows of the scene's pyramid (of ``levels``, None: all; those meeting ``area_px``, an area
    of interest in the scene's pixels, when given) and the seconds they should take. ``height`` and
    ``width`` are the grid the pyramid is planned on (``serving.resolution``)."""
    windows = count_windows(height, width, window, overlap, levels)
    if area_px is not None and windows <= MAX_LISTED_WINDOWS:
        plan = plan_pyramid(height, width, window=window, overlap=overlap, max_side=window,
                            levels=None if levels is None else list(levels))
        windows = int(windows_meeting(area_px, window_footprints(plan)).sum())
    return Cost(windows, windows * rate.seconds)


def check_cost(cost: Cost, *, max_windows: int | None, max_seconds: float | None) -> None:
    """``TooCostly`` when ``cost`` is past a limit (None: no limit)."""
    if max_windows is not None and cost.windows > max_windows:
        raise TooCostly(f"the scene has {cost.windows:,} windows to run, more than this server's limit of "
                        f"{max_windows:,} (--max-windows): send a smaller scene or a part of it")
    if max_seconds is not None and cost.seconds > max_seconds:
        raise TooCostly(f"the scene's {cost.windows:,} windows would take about {cost.seconds:,.0f} s on this "
                        f"server, more than its limit of {max_seconds:g} s (--max-job-seconds): send a smaller "
                        "scene or a part of it")
