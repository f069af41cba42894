"""At which resolution does a model see bridges best? AP on labelled images resampled over a range of
scales (issue 21, part 1: the first measurement towards a resolution-aware pyramid).

Each image of a DOTA-format folder is resampled by each ``--scales`` factor (bilinear up, average
down), its labels scaled with it, and the model is evaluated on the resampled set through the scene
path, as ``hbdnet eval`` does:

    python tools/resolution_curve.py --data data/nwpu-bridges/val --work /tmp/rescurve --scales 0.5 1 2 3

prints AP50, AP75 and mAP per scale, with the windows run and the seconds taken.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import rasterio
from rasterio.enums import Resampling

from hbdnet.data.dota import load_dota_folder
from serving.evaluate import evaluate_model
from serving.model_ref import resolve_model


def resampled(src: Path, out: Path, scale: float) -> Path:
    """``src`` (images/, labelTxt/) with every image and label resampled by ``scale``, as PNGs."""
    if (out / "labelTxt").is_dir():
        return out
    (out / "images").mkdir(parents=True)
    (out / "labelTxt").mkdir()
    for img in load_dota_folder(src):
        with rasterio.open(img.image_path) as ds:
            h, w = max(1, round(ds.height * scale)), max(1, round(ds.width * scale))
            data = ds.read(out_shape=(ds.count, h, w),
                           resampling=Resampling.bilinear if scale >= 1 else Resampling.average)
        with rasterio.open(out / "images" / f"{img.image_id}.png", "w", driver="PNG", width=w, height=h,
                           count=data.shape[0], dtype=data.dtype) as dst:
            dst.write(data)
        polys = img.polygons.reshape(-1, 8) * scale
        (out / "labelTxt" / f"{img.image_id}.txt").write_text(
            "".join(" ".join(f"{v:.1f}" for v in p) + " bridge 0\n" for p in polys))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a DOTA-format folder (images/, labelTxt/)")
    p.add_argument("--work", type=Path, required=True, help="where the resampled sets are kept")
    p.add_argument("--model", default="default")
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    args = p.parse_args()
    model = resolve_model(args.model, device="cpu")
    print(f"model {model.label}, runtime {getattr(model.spec, 'runtime', 'auto')}")
    print("| scale | AP50 | AP75 | mAP | found / false at the operating point | seconds |")
    print("|---|---|---|---|---|---|")
    for scale in args.scales:
        folder = resampled(args.data, args.work / f"x{scale:g}", scale)
        start = time.monotonic()
        m = evaluate_model(load_dota_folder(folder), model)
        took = time.monotonic() - start
        print(f"| {scale:g} | {m['AP50']:.3f} | {m['AP75']:.3f} | {m['mAP']:.3f} | {m.get('op_tp', 'n/a')} / "
              f"{m.get('op_fp', 'n/a')} | {took:.0f} |", flush=True)


if __name__ == "__main__":
    main()
