"""The merge against the independent check (issue 12): per case, the holistic merge and the authors'.

    python tools/bench_merge.py [--quick] [--seeds N] [--no-timing]

Cases, all through :class:`serving.testing.simulate.CheckDetector` (the visible part of each true
bridge in every window of every level, a rectangle along the bridge, +-2 px of jitter in that
level's pixels) over the whole pyramid plan:

* ``scene/<scores>``: :func:`~serving.testing.simulate.check_scene`, 12,000 x 8,000 px with 100 bridges
  of 50 to 6,000 px, with constant, noisy, coarse-higher and coarse-lower scores: recall at IoU 0.5,
  fragmentation, wrong merges (an output box holding half of each of two bridges).
* ``near/<case>``: :func:`~serving.testing.simulate.near_miss_scene`, each near-miss pair at four
  angles and under every score mode: pairs kept as two correct boxes.
* the merge time of 100,000 window detections (``time_merge``; target 2 s).

Targets: recall >= 0.99, fragmentation <= 2 %, no wrong merge, every near-miss pair kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.merge.methods import MergeConfig, merge  # noqa: E402
from serving.testing.simulate import (  # noqa: E402
    NEAR_MISS_CASES,
    CheckDetector,
    check_scene,
    detect_scene,
    near_miss_scene,
    pairs_kept,
    score_against_truth,
    time_merge,
)

MODES = ("constant", "noisy", "coarse_higher", "coarse_lower")
METHODS = ("holistic", "authors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 6,000 x 4,000 px scene with 50 bridges")
    ap.add_argument("--seeds", type=int, default=1, help="scenes (and detector seeds) per case")
    ap.add_argument("--no-timing", action="store_true", help="skip the 100,000-detection merge timing")
    args = ap.parse_args()
    t0 = time.perf_counter()

    rows = []
    for mode in MODES:
        agg = {m: [] for m in METHODS}
        for seed in range(args.seeds):
            scene = (check_scene(4000, 6000, 50, (50, 3000), seed=seed) if args.quick
                     else check_scene(seed=seed))
            dets = detect_scene(scene, CheckDetector(scene.boxes, scores=mode, seed=seed))
            for method in METHODS:
                m = merge(dets, MergeConfig(method=method))
                agg[method].append(score_against_truth(m.boxes, m.scores, scene.boxes))
        for method in METHODS:
            s = agg[method]
            n = sum(x.n_truth for x in s)
            rows.append((f"scene/{mode}", method, sum(x.recall * x.n_truth for x in s) / n,
                         sum(x.fragmentation * x.n_truth for x in s) / n, sum(x.merged for x in s), n,
                         sum(x.n_output for x in s)))

    print(f"{'case':<22} {'merge':<9} {'recall':>7} {'frag %':>7} {'wrong merges':>13} {'bridges':>8} {'boxes':>6}")
    for case, method, rec, frag, merged, n, n_out in rows:
        print(f"{case:<22} {method:<9} {rec:>7.4f} {100 * frag:>7.2f} {merged:>13d} {n:>8d} {n_out:>6d}")

    kept = {(c, m): [0, 0] for c in NEAR_MISS_CASES for m in METHODS}
    for seed in range(args.seeds):
        near = near_miss_scene(seed=seed)
        for mode in MODES:
            dets = detect_scene(near.scene, CheckDetector(near.scene.boxes, scores=mode, seed=seed))
            for method in METHODS:
                m = merge(dets, MergeConfig(method=method))
                ok = pairs_kept(score_against_truth(m.boxes, m.scores, near.scene.boxes))
                for case, good in zip(near.cases, ok):
                    kept[case, method][0] += int(good)
                    kept[case, method][1] += 1
    print(f"\n{'near-miss pairs kept as two correct boxes (4 angles x 4 score modes per seed)':<80}")
    print(f"{'case':<22} " + " ".join(f"{m:>10}" for m in METHODS))
    for case in NEAR_MISS_CASES:
        print(f"{'near/' + case:<22} " + " ".join(f"{kept[case, m][0]:>4d} / {kept[case, m][1]:<3d}" for m in METHODS))

    if not args.no_timing:
        print()
        for method in METHODS:
            r = time_merge(100_000, repeats=3, method=method)
            print(f"merge time {method:<9}: {int(r['n_detections'])} detections -> {int(r['n_merged'])} boxes "
                  f"in {r['seconds']:.2f} s wall, {r['cpu_seconds']:.2f} s CPU (best of 3; target 2 s)")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"\nbench took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
