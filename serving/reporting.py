"""What a run says as it goes: the plan of a scene in one line, and an estimate of the time left."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from serving.engine.reader import ScenePlan
from serving.engine.scene import SceneInfo
from serving.resolution import ResolutionPlan


def plan_summary(info: SceneInfo, plan: ScenePlan, resolution: ResolutionPlan | None = None) -> str:
    """One line: the scene's size (width x height) as the pyramid is planned on it and the windows to
    run per pyramid level, with the level's metres a pixel and how the scene was resampled where
    ``resolution`` knows them (and the windows skipped)."""
    level_gsds = resolution.level_gsds if resolution is not None else ()
    counts = Counter(item.window.level for item in plan.items)
    levels = ", ".join(f"level {lv} ({f'{level_gsds[lv]:.3g} m' if lv < len(level_gsds) else f'1/{2**lv}'}) {n}"
                       for lv, n in sorted(counts.items()))
    n = len(plan.items)
    line = f"{info.width} x {info.height} px (width x height), {n} window{'' if n == 1 else 's'} to run"
    if levels:
        line += f": {levels}"
    if plan.skipped:
        line += f"; {len(plan.skipped)} without a valid pixel skipped"
    said = resolution.summary() if resolution is not None else None
    return f"{said}; {line}" if said else line


def duration(seconds: float) -> str:
    """``42 s``, ``4 min 10 s``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class RunEstimate:
    """Says once, from the first windows of a run, how long the rest will take.

    ``start()`` when the windows start; call it as the progress callback ``(done, total)``: once
    ``after`` windows are done (and some remain) it says ``estimate: about 4 min 10 s left for 250
    windows (1.00 s per window from the first 3)`` (``label`` names the scene after ``estimate:``).
    Wall time per window, so parallel workers count.
    """

    def __init__(self, say: Callable[[str], None], after: int = 3, clock: Callable[[], float] = time.perf_counter,
                 label: str = ""):
        self.say = say
        self.label = f"{label}: " if label else ""
        self.after = after
        self.clock = clock
        self.t0: float | None = None
        self.reported = False

    def start(self) -> None:
        self.t0 = self.clock()

    def __call__(self, done: int, total: int) -> None:
        if self.reported or self.t0 is None or done < self.after or done >= total:
            return
        self.reported = True
        per = (self.clock() - self.t0) / done
        self.say(f"estimate: {self.label}about {duration(per * (total - done))} left for {total - done} windows "
                 f"({per:.2f} s per window from the first {done})")
