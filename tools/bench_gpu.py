"""GPU benchmark of the whole engine: a 16384 px scene through ``detect_scene`` with the faithful R50 model.

    python tools/bench_gpu.py [--size 16384] [--device cuda] [--precision auto] [--batch-size N]
                              [--model PATH|light] [--cache-dir DIR]
    python tools/bench_gpu.py --device cpu --size 2048 --model light     # the same path, small, on a CPU

1. Writes (or reuses) the synthetic RGB GeoTIFF of ``tools/bench_engine.py`` (tiled 512, DEFLATE +
   predictor) of ``--size`` px into ``--cache-dir``.
2. The model: ``--model PATH``; ``light``, the untrained light model of ``tools/bench_engine.py``
   (for a CPU run); by default the faithful HBD-Net R50 (``configs/hbdnet_r50_obb.yaml``) with random
   weights fixed by a seed, saved once into ``--cache-dir``. Untrained, every RoI would score about
   0.5 and each window would hand ``max_per_img`` boxes to NMS and to the merge; so the bias of the
   bridge logit of each random detector is set, on one window of the scene, so that 1 % of the RoIs
   score above the score threshold (``--roi-pass``): post-processing then does about the work of a
   trained model's, and the network the same work as any.
3. One pool (``workers=0``: the model in this process, the scene read in one pass, every level from
   one decode; no Ray needed) runs a warm-up scene (2048 px: CUDA context, cuDNN's choice of kernels,
   the allocator), then the timed scene.
4. Prints the windows, the scene's seconds (open, plan, the stream of windows, the merge), windows per
   second of the stream, the GPU memory peak (``torch.cuda.max_memory_allocated``), the engine's
   ``read`` seconds (the model's thread blocked waiting for the next window: the pass decoding, and on
   a GPU its upload) and ``detect`` seconds (the forward passes and their post-processing), and the
   share of the stream the model waited for reads, ``read / (read + detect)``.

The last line is ``gpu_16k_seconds=<s> windows_per_s=<w> gpu_wait_share=<x>`` (the scene's seconds
whatever ``--size`` and ``--device`` are; the goal is under 10 s at 16384 px on one H200-class GPU).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from serving.engine.detectors import ModelSpec

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from bench_engine import ensure_light_model, ensure_scenes  # noqa: E402  (tools/ is on sys.path as a script)

R50_CONFIG = REPO / "configs" / "hbdnet_r50_obb.yaml"
WARMUP_SIZE = 2048


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def calibrate_bridge_bias(model, image, device, roi_pass: float) -> None:
    """Shift each detector's bridge-logit bias so that a ``roi_pass`` share of its RoIs on ``image``
    scores above its score threshold (see the module docstring)."""
    import torch

    for det in [model.local_detector, *model.global_detectors]:
        fc_cls = det.roi_head.bbox_head.fc_cls
        seen = []
        hook = fc_cls.register_forward_hook(lambda m, a, out: seen.append(out.detach().float()))
        with torch.inference_mode():
            det([torch.from_numpy(image).to(device)])
        hook.remove()
        logits = torch.cat(seen)
        margin = logits[:, 0] - logits[:, -1]  # bridge minus background
        shift = logit(det.roi_head.score_thr) - float(torch.quantile(margin, 1 - roi_pass))
        with torch.no_grad():
            fc_cls.bias[0] += shift


def ensure_r50_model(cache_dir: Path, scene: Path, device: str, roi_pass: float, seed: int = 0) -> Path:
    """The faithful R50 HBD-Net with random weights (``seed``), calibrated on ``scene`` (module docstring)."""
    import rasterio
    import torch

    from hbdnet.checkpoint import save_checkpoint
    from hbdnet.models.hbdnet import HBDNet
    from hbdnet.training.config import load_experiment

    path = cache_dir / f"hbdnet_r50_obb_random_seed{seed}_pass{roi_pass:g}.pth"
    if path.exists():
        return path
    torch.manual_seed(seed)
    exp = load_experiment(R50_CONFIG)
    model = HBDNet(exp.model).to(device).eval()
    with rasterio.open(scene) as ds:
        side = min(exp.model.window, ds.width, ds.height)
        image = ds.read([1, 2, 3], window=rasterio.windows.Window(0, 0, side, side))
    calibrate_bridge_bias(model, image, device, roi_pass)
    save_checkpoint(path, model.cpu(), {"name": path.stem})
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384, help="side of the synthetic scene in px (default 16384)")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--precision", default="auto", help="auto, float32 or bfloat16 (default auto)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="windows per forward pass (default: the engine's, 8 on a GPU, 1 on a CPU)")
    ap.add_argument("--model", default=None,
                    help="checkpoint PATH, or 'light' (untrained light model); default: random R50")
    ap.add_argument("--roi-pass", type=float, default=0.01,
                    help="share of RoIs a random R50 scores above its threshold (default 0.01)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/hbdnet-bench"))
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up scene")
    args = ap.parse_args(argv)

    import torch

    from serving.engine.pools import PoolConfig, make_pool
    from serving.testing.engine_runs import detect_file as detect_scene

    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        sys.exit("bench_gpu: --device cuda, but torch sees no GPU (use --device cpu for the small CPU run)")
    t_bench = time.perf_counter()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(args.device) if on_gpu else 'no GPU used'}", flush=True)
    sizes = sorted({args.size} | (set() if args.no_warmup else {min(WARMUP_SIZE, args.size)}))
    scenes = ensure_scenes(args.cache_dir, sizes, fresh=False)
    scene = scenes[args.size]

    if args.model == "light":
        model, note = ensure_light_model(args.cache_dir, None)
        if model is None:
            sys.exit(f"bench_gpu: {note}")
    elif args.model:
        model, note = args.model, "given checkpoint"
    else:
        model = str(ensure_r50_model(args.cache_dir, scene, args.device, args.roi_pass))
        note = f"faithful R50 ({R50_CONFIG.name}), random weights, {args.roi_pass:.0%} of RoIs above threshold"
    print(f"model: {model} ({note})", flush=True)

    spec = ModelSpec(path=model, device=args.device, precision=args.precision)
    t = time.perf_counter()
    with make_pool(spec, PoolConfig(workers=0, batch_size=args.batch_size)) as pool:
        worker = pool._worker
        detector = worker.detector
        print(f"pool: in process, batch {worker.batch_size}, precision {detector.precision}, "
              f"uploads ahead: {detector.prepare_ahead}; model loaded in {time.perf_counter() - t:.1f} s",
              flush=True)
        if not args.no_warmup and args.size != sizes[0]:
            t = time.perf_counter()
            warm = detect_scene(str(scenes[sizes[0]]), spec, pool=pool)
            print(f"warm-up {sizes[0]} px: {warm.windows} windows in {time.perf_counter() - t:.1f} s", flush=True)
        if on_gpu:
            torch.cuda.synchronize(args.device)
            torch.cuda.reset_peak_memory_stats(args.device)
        t = time.perf_counter()
        marks = iter(range(10, 101, 10))
        mark = next(marks)

        def progress(done: int, total: int) -> None:  # so that a run stopped by a time limit still says how far
            nonlocal mark
            while mark is not None and done * 100 >= mark * total:
                print(f"  {done}/{total} windows at {time.perf_counter() - t:.1f} s", flush=True)
                mark = next(marks, None)

        result = detect_scene(str(scene), spec, pool=pool, progress=progress)
        peak = torch.cuda.max_memory_allocated(args.device) / 2**30 if on_gpu else math.nan

    tim = result.timings
    stream = tim.get("stream", math.nan)
    read, detect = tim.get("read", math.nan), tim.get("detect", math.nan)
    wait_share = read / (read + detect) if read + detect > 0 else math.nan
    per_s = result.windows / stream if stream > 0 else math.nan
    print(f"scene {args.size} px: {result.windows} windows ({result.skipped} empty), "
          f"{len(result.scores)} bridges after the merge", flush=True)
    print("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in tim.items()), flush=True)
    print(f"{per_s:.2f} windows/s over the stream; the model waited for reads {wait_share:.1%} of it "
          f"(read {read:.2f} s, detect {detect:.2f} s)", flush=True)
    print(f"GPU memory peak: {peak:.2f} GiB" if on_gpu else "GPU memory peak: n/a (CPU run)", flush=True)
    print(f"benchmark took {time.perf_counter() - t_bench:.0f} s; load average {os.getloadavg()}", flush=True)
    print(f"gpu_16k_seconds={tim.get('total', math.nan):.2f} windows_per_s={per_s:.2f} gpu_wait_share={wait_share:.3f}")


if __name__ == "__main__":
    main()
