"""Time one 1024 px window through the faithful Oriented R-CNN: hbdnet against mmrotate, in one run.

    python tools/bench_window.py [--mmrotate-python /tmp/mmrotate-venv/bin/python] [--repeat 5]
        [--threads 2] [--rcnn-candidates 300] [--image samples/autzen_willamette_footbridge_0.30m.tif]

The authors' stack runs in its own virtual environment (``docs/anchors.md`` and
``tools/make_convert_golden.py`` say how to build it) as a subprocess of this script (``--worker``),
which answers one request at a time, so the two sides never run at the same time.

Same model: mmrotate 0.3.4 builds its Oriented R-CNN (ResNet-50, FPN 256, 2 x 1024 FC, angle ``oc``)
with seeded random weights, every tensor perturbed (``make_convert_golden.perturb_weights``), and saves
the state dict as safetensors; hbdnet converts it with ``hbdnet.convert``. Random weights give random
scores, so ``fc_cls``'s bridge bias is set, on mmrotate's proposals for this input, so that exactly
``--rcnn-candidates`` RoIs score above ``score_thr`` and enter the final rotated NMS (a trained model
has tens to hundreds there on a window with bridges; an untrained one all 2000). Test settings are the
authors' (``docs/hbdnet-method.md``): RPN top 2000 per level, horizontal NMS 0.8, 2000
proposals; RCNN score_thr 0.05, rotated NMS 0.4, at most 400 boxes.

Same input: a 1024 x 1024 RGB crop of a real scene (by default the Autzen footbridge sample, read with
rasterio), normalised on both sides with the same arithmetic, in torch.

Same threads: ``torch.set_num_threads(--threads)`` on both sides (default 2).

Per repeat, each side runs the window end to end (hbdnet: ``HBDNet.detect`` under
``torch.inference_mode``, on the model in the engine's inference form,
``hbdnet.models.deploy.inference_form``: BatchNorm folded, channels_last; ``--as-trained`` times the
model as built instead; mmrotate: ``simple_test`` under ``torch.no_grad``, its test
path) and once more split into stages, with timers wrapped around the inner calls (NMS, anchors,
decoding, RoIAlign, box head) that the stage functions make. Sides alternate A B B A ... so that drift on
a busy machine falls on both. Printed: the proposal and detection counts, how well the two sides'
detections agree (each mmrotate detection matched to hbdnet's by rotated IoU; score and box
differences), a per-stage table (median over repeats, ms), the end-to-end times (best and median),
the ratio of the best times, and last ``window_ratio_hbdnet_over_mmrotate=<x>`` (median over median;
<= 1 means hbdnet is at least as fast). On a machine shared with other work the two disagree: the
best times are those of the moments when the machine was free. The two sides run different torch
builds (their environments'); the first lines say which.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "autzen_willamette_footbridge_0.30m.tif"
# Around the footbridge (samples/README.md: centre about (945, 3450)).
SAMPLE_OFFSET = (433, 2938)
SIZE = 1024
SEED = 0
# The authors' test settings (hbdnet-method.md, "Proposals" and "Test post-processing per 1024 patch").
RPN_NMS_PRE = 2000
RPN_MAX_PER_IMG = 2000
RCNN_SCORE_THR = 0.05
RCNN_NMS_IOU = 0.4
RCNN_MAX_PER_IMG = 400
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
REPLY = "@@ "  # prefix of the worker's protocol lines (mmcv prints its own lines on stdout)

# Stage names, in pipeline order, shared by both sides' tables.
STAGES = (
    "preprocess",
    "backbone+FPN",
    "RPN head convs",
    "anchors",
    "top-k + decode",
    "proposal NMS",
    "RoIAlign",
    "bbox head FCs",
    "final decode",
    "final NMS + rest",
)


class StageTimer:
    """Wall-clock time per stage name, accumulated over nested calls of wrapped functions."""

    def __init__(self) -> None:
        self.times: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] += time.perf_counter() - t0

    @contextlib.contextmanager
    def wrap(self, owner: Any, attr: str, name: str) -> Iterator[None]:
        """Time every call of ``owner.attr`` (a module-level function or an instance's method) as ``name``."""
        original = getattr(owner, attr)
        own = attr in vars(owner)  # a module's function; an instance's method lives on its class

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return original(*args, **kwargs)

        setattr(owner, attr, timed)
        try:
            yield
        finally:
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)


def normalize(rgb: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` uint8 -> ``(1, 3, H, W)`` float32, mmdet's Normalize (mmrotate's side only)."""
    x = rgb.float()
    mean = x.new_tensor(PIXEL_MEAN).view(3, 1, 1)
    std = x.new_tensor(PIXEL_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


# ------------------------------------------------------------------------------------------------
# mmrotate side (runs in the authors' environment)


class MMRotateSide:
    def __init__(self, workdir: Path, threads: int) -> None:
        torch.set_num_threads(threads)
        self.workdir = workdir
        self.model = None
        self.image = torch.from_numpy(np.load(workdir / "input.npy"))
        shape = (*self.image.shape[1:], 3)
        self.metas = [dict(img_shape=shape, ori_shape=shape, pad_shape=shape,
                           scale_factor=np.ones(4, dtype=np.float32), flip=False)]

    def build(self, candidates: int) -> dict[str, Any]:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import mmcv
        import mmdet
        import mmrotate
        from make_convert_golden import mmrotate_config, perturb_weights
        from mmrotate.models import build_detector
        from safetensors.torch import save_file

        torch.manual_seed(SEED)
        cfg = mmrotate_config(base_channels=64, fpn=256, fc=1024, rpn_nms_pre=RPN_NMS_PRE,
                              rpn_max_per_img=RPN_MAX_PER_IMG, rcnn_score_thr=RCNN_SCORE_THR,
                              rcnn_nms_iou=RCNN_NMS_IOU, rcnn_max_per_img=RCNN_MAX_PER_IMG)
        model = build_detector(cfg)
        model.init_weights()
        perturb_weights(model, SEED + 1)
        model.eval()
        with torch.no_grad():
            # Objectness logits spread wide enough that the top-k by score is not decided by rounding.
            model.rpn_head.rpn_cls.weight.mul_(100.0)
            feats = model.extract_feat(normalize(self.image))
            proposals = model.rpn_head.simple_test_rpn(feats, self.metas)
            rois = torch.cat([torch.zeros(len(proposals[0]), 1), proposals[0][:, :5]], dim=1)
            logits = model.roi_head._bbox_forward(feats, rois)["cls_score"]
            # softmax over [bridge, background]: p(bridge) > thr <=> l0 - l1 > logit(thr)
            margin = (logits[:, 0] - logits[:, 1]).sort(descending=True).values
            k = min(candidates, len(margin) - 1)
            cut = float(margin[k - 1] + margin[k]) / 2 if k > 0 else float(margin[0]) + 1.0
            model.roi_head.bbox_head.fc_cls.bias[0] += math.log(RCNN_SCORE_THR / (1 - RCNN_SCORE_THR)) - cut
        self.model = model
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(self.workdir / "weights.safetensors"))
        return {"torch": torch.__version__, "mmcv": mmcv.__version__, "mmdet": mmdet.__version__,
                "mmrotate": mmrotate.__version__, "threads": torch.get_num_threads()}

    def end_to_end(self) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        with torch.no_grad():
            dets = self.model.simple_test(normalize(self.image), self.metas, rescale=False)[0][0]
        return time.perf_counter() - t0, np.asarray(dets, dtype=np.float64).reshape(-1, 6)

    def staged(self) -> tuple[dict[str, float], dict[str, int]]:
        import mmrotate.core.post_processing.bbox_nms_rotated as nms_module
        import mmrotate.models.dense_heads.oriented_rpn_head as rpn_module

        m, t = self.model, StageTimer()
        counts: dict[str, int] = {}
        with contextlib.ExitStack() as patches, torch.no_grad():
            patches.enter_context(t.wrap(m.rpn_head, "forward", "RPN head convs"))
            patches.enter_context(t.wrap(m.rpn_head.anchor_generator, "grid_priors", "anchors"))
            patches.enter_context(t.wrap(rpn_module, "batched_nms", "proposal NMS"))
            patches.enter_context(t.wrap(m.roi_head.bbox_roi_extractor, "forward", "RoIAlign"))
            patches.enter_context(t.wrap(m.roi_head.bbox_head, "forward", "bbox head FCs"))
            patches.enter_context(t.wrap(m.roi_head.bbox_head.bbox_coder, "decode", "final decode"))
            patches.enter_context(t.wrap(nms_module, "nms_rotated", "final NMS"))
            with t.stage("preprocess"):
                img = normalize(self.image)
            with t.stage("backbone+FPN"):
                feats = m.extract_feat(img)
            with t.stage("rpn"):
                proposals = m.rpn_head.simple_test_rpn(feats, self.metas)
            with t.stage("roi"):
                dets = m.roi_head.simple_test(feats, proposals, self.metas, rescale=False)[0][0]
        counts["proposals"] = len(proposals[0])
        counts["detections"] = len(dets)
        return split_rest(t.times), counts

    def serve(self) -> None:
        for line in sys.stdin:
            request = json.loads(line)
            if request["op"] == "build":
                reply: Any = self.build(request["candidates"])
            elif request["op"] == "end_to_end":
                seconds, dets = self.end_to_end()
                reply = {"seconds": seconds, "dets": dets.tolist()}
            elif request["op"] == "staged":
                times, counts = self.staged()
                reply = {"times": times, "counts": counts}
            else:
                return
            print(REPLY + json.dumps(reply), flush=True)


def split_rest(times: dict[str, float]) -> dict[str, float]:
    """From the outer stages ``rpn`` and ``roi`` and the timed inner calls, the table's stages."""
    out = {k: times.get(k, 0.0) for k in ("preprocess", "backbone+FPN", "RPN head convs", "anchors",
                                          "proposal NMS", "RoIAlign", "bbox head FCs", "final decode")}
    out["top-k + decode"] = times["rpn"] - out["RPN head convs"] - out["anchors"] - out["proposal NMS"]
    out["final NMS + rest"] = times["roi"] - out["RoIAlign"] - out["bbox head FCs"] - out["final decode"]
    out["final NMS"] = times.get("final NMS", 0.0)
    out["total"] = sum(out[s] for s in STAGES)
    return out


# ------------------------------------------------------------------------------------------------
# hbdnet side (this environment)


class HBDNetSide:
    def __init__(self, weights: Path, image: torch.Tensor, threads: int, as_trained: bool = False) -> None:
        from safetensors.torch import load_file

        from hbdnet.convert import convert_state_dict
        from hbdnet.models.build import ModelConfig
        from hbdnet.models.hbdnet import HBDNetConfig

        torch.set_num_threads(threads)
        cfg = ModelConfig(backbone="resnet50", fpn_channels=256, rpn_feat_channels=256, fc_channels=1024,
                          rpn_nms_pre=RPN_NMS_PRE, rpn_max_per_img=RPN_MAX_PER_IMG, score_thr=RCNN_SCORE_THR,
                          nms_iou=RCNN_NMS_IOU, max_per_img=RCNN_MAX_PER_IMG, finest_scale=16.0)
        model, report = convert_state_dict(load_file(str(weights)), HBDNetConfig(local=cfg, global_detector=cfg))
        if not report.ok:
            raise RuntimeError("conversion failed: " + "; ".join(report.lines()))
        if as_trained:
            self.model = model.eval()
        else:
            from hbdnet.models.deploy import inference_form

            self.model = inference_form(model, torch.device("cpu"))
        self.image = image

    def end_to_end(self) -> tuple[float, dict[str, torch.Tensor]]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            dets = self.model.detect([self.image], 0)[0]
        return time.perf_counter() - t0, dets

    def staged(self) -> tuple[dict[str, float], dict[str, int]]:
        import hbdnet.models.roi_heads as roi_module
        import hbdnet.models.rpn as rpn_module

        det, t = self.model.local_detector, StageTimer()
        rpn, roi = det.rpn_head, det.roi_head
        with contextlib.ExitStack() as patches, torch.inference_mode():
            patches.enter_context(t.wrap(rpn, "head", "RPN head convs"))
            patches.enter_context(t.wrap(rpn.anchor_generator, "grid_anchors", "anchors"))
            patches.enter_context(t.wrap(rpn_module, "batched_nms_horizontal", "proposal NMS"))
            patches.enter_context(t.wrap(roi.bbox_roi_extractor, "forward", "RoIAlign"))
            patches.enter_context(t.wrap(roi.bbox_head, "forward", "bbox head FCs"))
            patches.enter_context(t.wrap(roi.obb_coder, "decode", "final decode"))
            patches.enter_context(t.wrap(roi_module, "batched_nms_rotated", "final NMS"))
            with t.stage("preprocess"):
                batch, sizes = det.preprocess([self.image])
            with t.stage("backbone+FPN"):
                feats = det.extract_features(batch)
            with t.stage("rpn"):
                proposals, _ = rpn(feats, sizes)
            with t.stage("roi"):
                dets, _ = roi(feats, proposals, sizes)
        return split_rest(t.times), {"proposals": len(proposals[0]), "detections": len(dets[0]["scores"])}


# ------------------------------------------------------------------------------------------------
# driver


class Worker:
    """The mmrotate side as a subprocess answering one JSON request per line."""

    def __init__(self, python: str, workdir: Path, threads: int) -> None:
        self.log = open(workdir / "worker.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", str(workdir), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
        )
        self.workdir = workdir

    def ask(self, **request: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        self.log.flush()
        tail = (self.workdir / "worker.log").read_text()[-3000:]
        raise RuntimeError(f"the mmrotate worker stopped:\n{tail}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask(op="quit")
        self.proc.wait(timeout=30)
        self.log.close()


def read_window(path: Path, offset: tuple[int, int], size: int) -> np.ndarray:
    """``(3, size, size)`` uint8 RGB crop of a scene (zeros beyond its edges)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as src:
        data = src.read([1, 2, 3], window=Window(offset[0], offset[1], size, size), boundless=True, fill_value=0)
    if data.dtype != np.uint8:
        raise SystemExit(f"{path}: expected an 8-bit RGB scene, got {data.dtype}")
    return np.ascontiguousarray(data)


def compare(ours: dict[str, torch.Tensor], ref: np.ndarray) -> str:
    """Each mmrotate detection matched to hbdnet's by rotated IoU: how close the two sides are."""
    from hbdnet.boxes.convention import oc_to_le90
    from hbdnet.boxes.iou import box_iou_rotated

    ref_t = torch.from_numpy(ref).double()
    n_ours, n_ref = len(ours["scores"]), len(ref_t)
    if n_ours == 0 or n_ref == 0:
        return f"detections: hbdnet {n_ours}, mmrotate {n_ref}"
    iou = box_iou_rotated(oc_to_le90(ref_t[:, :5]), ours["boxes"].double())
    best, j = iou.max(1)
    score_diff = (ours["scores"].double()[j] - ref_t[:, 5]).abs()
    return (f"detections: hbdnet {n_ours}, mmrotate {n_ref}; each mmrotate box's best hbdnet match: "
            f"IoU min {float(best.min()):.6f} (median {float(best.median()):.6f}), "
            f"score |diff| max {float(score_diff.max()):.2e}")


def median_ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mmrotate-python", default="/tmp/mmrotate-venv/bin/python",
                        help="python of the authors' environment")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rcnn-candidates", type=int, default=300,
                        help="RoIs made to score above score_thr, i.e. the final NMS's input")
    parser.add_argument("--image", type=Path, default=SAMPLE)
    parser.add_argument("--size", type=int, default=SIZE, help="window side (px); the model's is 1024")
    parser.add_argument("--offset", type=int, nargs=2, default=SAMPLE_OFFSET, metavar=("COL", "ROW"))
    parser.add_argument("--as-trained", action="store_true",
                        help="time hbdnet's model as built, not in the engine's inference form")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        MMRotateSide(args.worker, args.threads).serve()
        return
    if not Path(args.mmrotate_python).is_file():
        raise SystemExit(f"no python at {args.mmrotate_python}: build the authors' environment "
                         "(tools/make_convert_golden.py's docstring) or pass --mmrotate-python")
    if not args.image.is_file():
        raise SystemExit(f"no image at {args.image}")

    rgb = read_window(args.image, tuple(args.offset), args.size)
    with tempfile.TemporaryDirectory(prefix="bench_window_") as tmp:
        workdir = Path(tmp)
        np.save(workdir / "input.npy", rgb)
        worker = Worker(args.mmrotate_python, workdir, args.threads)
        try:
            versions = worker.ask(op="build", candidates=args.rcnn_candidates)
            ours = HBDNetSide(workdir / "weights.safetensors", torch.from_numpy(rgb), args.threads, args.as_trained)
            print(f"window {args.size} px from {args.image.name} at {tuple(args.offset)}; threads {args.threads}; "
                  f"repeats {args.repeat}; load before: {os.getloadavg()[0]:.2f}")
            print(f"hbdnet: torch {torch.__version__} | mmrotate {versions['mmrotate']}, mmcv {versions['mmcv']}, "
                  f"mmdet {versions['mmdet']}, torch {versions['torch']} (threads {versions['threads']})")

            # Warm-up, and the outputs the timing is for.
            _, our_dets = ours.end_to_end()
            ref_dets = np.asarray(worker.ask(op="end_to_end")["dets"]).reshape(-1, 6)
            print(compare(our_dets, ref_dets))

            e2e: dict[str, list[float]] = {"hbdnet": [], "mmrotate": []}
            stages: dict[str, dict[str, list[float]]] = {"hbdnet": defaultdict(list), "mmrotate": defaultdict(list)}
            counts: dict[str, dict[str, int]] = {}

            def run_side(side: str) -> None:
                if side == "hbdnet":
                    seconds, _ = ours.end_to_end()
                    times, counts[side] = ours.staged()
                else:
                    seconds = worker.ask(op="end_to_end")["seconds"]
                    reply = worker.ask(op="staged")
                    times, counts[side] = reply["times"], reply["counts"]
                e2e[side].append(seconds)
                for name, value in times.items():
                    stages[side][name].append(value)

            for r in range(args.repeat):
                for side in ("hbdnet", "mmrotate") if r % 2 == 0 else ("mmrotate", "hbdnet"):
                    run_side(side)
        finally:
            worker.close()

    print(f"counts: hbdnet {counts['hbdnet']}, mmrotate {counts['mmrotate']}")
    print(f"\nper stage, median of {args.repeat} (ms)      hbdnet  mmrotate")
    for name in (*STAGES, "total"):
        print(f"  {name:<36}{median_ms(stages['hbdnet'][name])} {median_ms(stages['mmrotate'][name])}")
    print(f"  {'(of which rotated NMS itself)':<36}{median_ms(stages['hbdnet']['final NMS'])} "
          f"{median_ms(stages['mmrotate']['final NMS'])}")
    print("\nend to end (s)   best    median")
    for side in ("hbdnet", "mmrotate"):
        print(f"  {side:<12}{min(e2e[side]):7.3f}  {statistics.median(e2e[side]):7.3f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(f"ratio of the best times: {min(e2e['hbdnet']) / min(e2e['mmrotate']):.3f}")
    ratio = statistics.median(e2e["hbdnet"]) / statistics.median(e2e["mmrotate"])
    print(f"window_ratio_hbdnet_over_mmrotate={ratio:.3f}")


if __name__ == "__main__":
    main()
