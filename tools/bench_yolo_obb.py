"""A one-stage peer for scale: untrained YOLOv8-OBB (Ultralytics, built from its yaml, no weights) timed
on the same 1024 px windows as ``tools/bench_cpu.py``. Run by that script's ``--yolo-python``, with the
Python of a venv of its own (Ultralytics is no dependency of hbdnet):

    python3 -m venv YOLO_VENV && YOLO_VENV/bin/pip install "torch==2.12.0" "torchvision==0.27.0" ultralytics

It reads the windows (``window_*.npy``, RGB ``(3, H, W)`` uint8) from ``--windows`` and prints one line
per model: ``yolo MODEL S`` with the median seconds per window of ``predict`` at ``imgsz`` 1024.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing fetched: the models are built from their yaml

import numpy as np
import torch
from ultralytics import YOLO


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["yolov8n-obb.yaml", "yolov8s-obb.yaml"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    windows = [np.load(p) for p in sorted(args.windows.glob("window_*.npy"))]
    # Ultralytics takes numpy images as HWC in BGR order.
    images = [np.ascontiguousarray(w.transpose(1, 2, 0)[:, :, ::-1]) for w in windows]
    for name in args.models:
        model = YOLO(name)
        model.predict(images[0], imgsz=1024, device="cpu", verbose=False)  # warm-up
        times = []
        for image in images:
            t0 = time.perf_counter()
            model.predict(image, imgsz=1024, device="cpu", verbose=False)
            times.append(time.perf_counter() - t0)
        print(f"yolo {name.removesuffix('.yaml')} {statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
