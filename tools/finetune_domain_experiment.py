"""Does ``hbdnet finetune`` help on imagery the shipped model has not seen? Before and after, on images
the fine-tuning never saw.

The new domain is made from the NWPU bridges (docs/data.md): each image becomes a georeferenced
single-band 16-bit GeoTIFF (a panchromatic look: the bands' mean, scaled to 16-bit with an offset and
noise), optionally upsampled ``--upsample`` times (a finer GSD). Its labels become a GeoPackage in
WGS84, as a QGIS user's corrected layer would be. Training images come from ``train`` in file order
until ``--bridges`` bridges are reached. The rest of ``train`` is the development set on which recipes
are compared (the fine-tuning never sees it), and all of ``val``, converted the same way, is the test
set, reported for every recipe but used to choose none.

    python tools/finetune_domain_experiment.py --data ../shared/data/nwpu-bridges --work /tmp/ftexp

prints the AP of the base model and of the fine-tuned one on the converted val images, and how long
the fine-tuning took.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pyogrio.raw
import pyproj
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from hbdnet.data.dota import load_dota_folder
from serving.evaluate import evaluate_model
from serving.finetune.run import FinetuneOptions, finetune
from serving.model_ref import resolve_model

UTM = "EPSG:32633"
GSD = 0.5  # m per pixel of the converted image


def convert(src: Path, out_dir: Path, upsample: int, seed: int) -> list[Path]:
    """A DOTA folder as pan 16-bit GeoTIFFs (images/, labelTxt/ scaled) and one WGS84 label layer per image."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labelTxt").mkdir(parents=True, exist_ok=True)
    to_lonlat = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    scenes = []
    for k, img in enumerate(load_dota_folder(src)):
        with rasterio.open(img.image_path) as ds:
            h, w = ds.height * upsample, ds.width * upsample
            rgb = ds.read(out_shape=(ds.count, h, w), resampling=Resampling.bilinear).astype(np.float32)
        rng = np.random.default_rng(seed + k)
        pan = rgb[:3].mean(axis=0) * 37.0 + 900.0 + rng.normal(0, 60, (h, w))
        transform = from_origin(400_000.0 + 5_000.0 * k, 5_800_000.0, GSD, GSD)
        path = out_dir / "images" / f"{img.image_id}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint16",
                           crs=CRS.from_string(UTM), transform=transform, tiled=True, compress="deflate") as out:
            out.write(pan.clip(0, 65535).astype(np.uint16)[None])
        polys = img.polygons.reshape(-1, 4, 2) * upsample
        lines = [" ".join(f"{v:.1f}" for v in p.reshape(-1)) + " bridge 0" for p in polys]
        (out_dir / "labelTxt" / f"{img.image_id}.txt").write_text("\n".join(lines) + "\n")
        if len(polys):
            xs, ys = transform @ (polys[..., 0], polys[..., 1])
            lon, lat = to_lonlat.transform(xs, ys)
            geoms = shapely.polygons(np.stack([lon, lat], axis=-1))
            pyogrio.raw.write(out_dir / f"{img.image_id}.gpkg", shapely.to_wkb(geoms), [], [],
                              geometry_type="Polygon", crs="EPSG:4326")
        scenes.append(path)
    return scenes


def merged_labels(layers: list[Path], out: Path) -> Path:
    geoms = []
    for layer in layers:
        _, _, wkb, _ = pyogrio.raw.read(layer, read_geometry=True, columns=[])
        geoms.extend(shapely.from_wkb(wkb))
    pyogrio.raw.write(out, shapely.to_wkb(np.array(geoms)), [], [], geometry_type="Polygon", crs="EPSG:4326")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="NWPU bridges folder with train/ and val/")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--bridges", type=int, default=20)
    p.add_argument("--upsample", type=int, default=1)
    p.add_argument("--epochs", type=int, default=FinetuneOptions.epochs)
    p.add_argument("--train", default=",".join(FinetuneOptions.parts), help="parts, comma-separated")
    p.add_argument("--lr", type=float, default=FinetuneOptions.lr)
    args = p.parse_args()
    train_dir, val_dir = args.work / "train", args.work / "val"
    if not val_dir.exists():
        convert(args.data / "train", train_dir, args.upsample, seed=0)
        convert(args.data / "val", val_dir, args.upsample, seed=1000)
    picked, rest, count = [], [], 0
    for img in load_dota_folder(train_dir):
        if count < args.bridges and len(img.boxes):
            picked.append(img)
            count += len(img.boxes)
        else:
            rest.append(img)
    labels = merged_labels([train_dir / f"{i.image_id}.gpkg" for i in picked], args.work / "corrected.gpkg")
    parts = tuple(args.train.split(","))
    tag = f"{args.train.replace(',', '+')}_e{args.epochs}_lr{args.lr:g}_b{count}"
    out = args.work / f"finetuned_{tag}.safetensors"
    shutil.rmtree(out.with_name(out.name + ".finetune"), ignore_errors=True)  # a run of older files: start over
    start = time.monotonic()
    result = finetune(args.model, [i.image_path for i in picked], labels, out,
                      options=FinetuneOptions(epochs=args.epochs, lr=args.lr, parts=parts), progress=False)
    took = time.monotonic() - start
    print(f"fine-tuned on {len(picked)} images, {result.bridges} bridges, in {took:.0f} s ({tag}); "
          f"operating point {result.operating_point}")
    print("| model | set | AP50 | AP75 | mAP | at the operating point: found / false |")
    print("|---|---|---|---|---|---|")
    for name, model in (("base", args.model), (tag, str(out))):
        for set_name, images in ((f"dev ({len(rest)} train images not fine-tuned on)", rest),
                                 ("val (test)", load_dota_folder(val_dir))):
            m = evaluate_model(images, resolve_model(model, device="cpu"))
            print(f"| {name} | {set_name} | {m['AP50']:.3f} | {m['AP75']:.3f} | {m['mAP']:.3f} | "
                  f"{m.get('op_tp', 'n/a')} / {m.get('op_fp', 'n/a')} |")


if __name__ == "__main__":
    main()
