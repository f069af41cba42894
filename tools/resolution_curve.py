"""At which resolution does a model see bridges best? AP on labelled images resampled over a range of
scales (issue 21, part 1: the first measurement towards a resolution-aware pyramid).

Each image of a DOTA-format folder is resampled by each ``--scales`` factor (bilinear up, average
down), its labels scaled with it, and the model is evaluated on the resampled set through the scene
path, as ``hbdnet eval`` does:

    python tools/resolution_curve.py --data data/nwpu-bridges/val --work /tmp/rescurve --scales 0.5 1 2 3

prints AP50, AP75 and mAP per scale, with the windows run and the seconds taken.

With ``--native-gsd M`` (the metres a pixel the images are taken to have as they are: NWPU's Google
Earth crops are about 0.5 m, MODEL_CARD.md), the resampled images are written as GeoTIFFs in UTM at
``M / scale`` metres a pixel, and each scale is measured twice in the same run: *before*, the model's
ground sample distances ignored (every pyramid level at the image's own pixels, as before issue 21),
and *after*, the pyramid planned in ground units (``serving.resolution``). A scale whose plan is the
same both ways is run once.

``--scenes A.tif B.tif`` times ``hbdnet detect`` on georeferenced scenes instead (a fine one and a
coarse one), before (a copy of the model file without its ground sample distances) and after, in
one run (``bench_cpu.timed_detect``: wall time and the command's own peak memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import rasterio
from affine import Affine
from rasterio.enums import Resampling

from hbdnet.data.dota import load_dota_folder
from serving.evaluate import evaluate_model
from serving.model_ref import ModelRef, resolve_model
from serving.resolution import plan_grid


def resampled(src: Path, out: Path, scale: float, gsd: float | None = None) -> Path:
    """``src`` (images/, labelTxt/) with every image and label resampled by ``scale``, as PNGs, or as
    GeoTIFFs of ``gsd`` metres a pixel in UTM 31N when it is given."""
    if (out / "labelTxt").is_dir():
        return out
    (out / "images").mkdir(parents=True)
    (out / "labelTxt").mkdir()
    for img in load_dota_folder(src):
        with rasterio.open(img.image_path) as ds:
            h, w = max(1, round(ds.height * scale)), max(1, round(ds.width * scale))
            data = ds.read(out_shape=(ds.count, h, w),
                           resampling=Resampling.bilinear if scale >= 1 else Resampling.average)
        geo = {} if gsd is None else {"driver": "GTiff", "crs": "EPSG:32631",
                                      "transform": Affine(gsd, 0, 500000.0, 0, -gsd, 5000000.0)}
        name = f"{img.image_id}.{'png' if gsd is None else 'tif'}"
        with rasterio.open(out / "images" / name, "w", **{"driver": "PNG", **geo}, width=w, height=h,
                           count=data.shape[0], dtype=data.dtype) as dst:
            dst.write(data)
        polys = img.polygons.reshape(-1, 8) * scale
        (out / "labelTxt" / f"{img.image_id}.txt").write_text(
            "".join(" ".join(f"{v:.1f}" for v in p) + " bridge 0\n" for p in polys))
    return out


def row(label: str, m: dict, took: float) -> str:
    return (f"| {label} | {m['AP50']:.3f} | {m['AP75']:.3f} | {m['mAP']:.3f} | {m.get('op_tp', 'n/a')} / "
            f"{m.get('op_fp', 'n/a')} | {took:.0f} |")


def measure(folder: Path, model: ModelRef) -> tuple[dict, float]:
    start = time.monotonic()
    m = evaluate_model(load_dota_folder(folder), model)
    return m, time.monotonic() - start


def without_gsd(model: str, folder: Path) -> Path:
    """A copy of ``model`` whose file records no ground sample distances: the engine as before."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hbdnet.checkpoint import resolve_model_path

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "model_without_gsd.safetensors"
    with safe_open(str(resolve_model_path(model)), framework="pt") as f:
        header, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    meta = json.loads(header["meta"])
    meta.pop("gsd_m", None)
    save_file(tensors, str(out), metadata={**header, "meta": json.dumps(meta)})
    return out


def time_scenes(scenes: list[Path], model: str, work: Path) -> None:
    from bench_cpu import timed_detect  # tools/ is on the path when this runs as a script

    before = without_gsd(model, work)
    for scene in scenes:
        t_before = timed_detect(scene, work / f"{scene.stem}_before.gpkg", "auto", str(before))
        t_after = timed_detect(scene, work / f"{scene.stem}_after.gpkg", "auto", model)
        print(f"{scene.name}: after / before = {t_after / t_before:.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="a DOTA-format folder (images/, labelTxt/)")
    p.add_argument("--work", type=Path, required=True, help="where the resampled sets are kept")
    p.add_argument("--model", default="default")
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    p.add_argument("--native-gsd", type=float, metavar="M",
                   help="metres a pixel of the images as they are: measure before and after the pyramid in ground units")
    p.add_argument("--scenes", type=Path, nargs="+", help="time hbdnet detect on these scenes before and after")
    args = p.parse_args()
    if args.scenes:
        time_scenes(args.scenes, args.model, args.work)
        return
    if args.data is None:
        p.error("give --data (AP by scale) or --scenes (time before and after)")
    model = resolve_model(args.model, device="cpu")
    print(f"model {model.label}, runtime {getattr(model.spec, 'runtime', 'auto')}, GSDs {model.gsd}")
    print("| scale | AP50 | AP75 | mAP | found / false at the operating point | seconds |")
    print("|---|---|---|---|---|---|")
    for scale in args.scales:
        if args.native_gsd is None:
            folder = resampled(args.data, args.work / f"x{scale:g}", scale)
            print(row(f"{scale:g}", *measure(folder, model)), flush=True)
            continue
        gsd = args.native_gsd / scale
        folder = resampled(args.data, args.work / f"x{scale:g}-geo", scale, gsd)
        before = measure(folder, dataclasses.replace(model, gsd=None))
        print(row(f"{scale:g} ({gsd:.3g} m) before", *before), flush=True)
        plan = plan_grid(1000, 1000, gsd, model.gsd, window=model.window)
        if plan.regrid is None and plan.levels is None:
            print(f"| {scale:g} after | same plan: the image runs at its own {gsd:.3g} m | | | | |", flush=True)
            continue
        finest = plan.run_gsd
        print(row(f"{scale:g} after (finest level {finest:.3g} m)", *measure(folder, model)), flush=True)


if __name__ == "__main__":
    main()
