"""The ``hbdnet`` command: the entry point and every subcommand's arguments, in one table here.

Each subcommand's ``run(args) -> int`` lives in a module of its own (``serving.cli.detect`` ...), which
imports the library only when it runs, so that ``hbdnet --help`` stays fast and a missing optional
dependency affects only the subcommand that needs it. Exit codes: 0 done, 1 the input could not be
processed, 2 usage or setup errors, 130 interrupted (each command's ``--help`` says more).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.cli import batch, convert, detect, evaluate, export, finetune, plan, serve, train
from serving.cli.arguments import (
    RUNTIMES,
    bbox,
    device,
    duration,
    one_line_errors,
    parse_bands,
    positive_number,
    precision,
    resolution,
    score,
    size_in_bytes,
    whole_number,
)
from serving.cli.errors import CliError
from serving.outputs.formats import OUTPUT_FORMATS

Subparsers = argparse._SubParsersAction


class _ShowDefaults(argparse.HelpFormatter):
    """Help that ends each option with its default, unless it has none to show (None, off) or says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "(default" in text or not action.option_strings
                or action.default is None or action.default is False or action.default == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _command(sub: Subparsers, name: str, run, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows ``description`` and every default."""
    p = sub.add_parser(name, help=summary, description=description, formatter_class=_ShowDefaults)
    p.set_defaults(run=run)
    return p


def _debug(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: `hbdnet --debug detect` and `hbdnet detect --debug` both work; absent, the top level decides.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME|PATH", default=None,
                   help="hbdnet model file (.safetensors or .pth), or the name of a bundled model "
                        "(default: the bundled 'default' model)")
    p.add_argument("--device", type=device, default="auto",
                   help="auto, cpu, cuda or cuda:N (auto: cuda when this machine has a GPU)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what runs the model's convolutional trunk: torch; onnx (its float32 export in ONNX "
                        "Runtime); int8 (the int8 trunk stored in the model file, in ONNX Runtime: on a CPU, "
                        "about half the time of onnx); auto: int8 on a CPU in float32 when the model file "
                        "has one, else torch")


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    """The model, its precision and the workers it runs in: ``detect``, ``batch`` and ``serve``."""
    _model_arguments(p)
    p.add_argument("--precision", type=precision, default="auto", metavar="P",
                   help="auto, float32 or bfloat16: the model's heavy convolutions and products in bfloat16 "
                        "(auto: bfloat16 on a GPU that has it, float32 on a CPU)")
    p.add_argument("--workers", type=whole_number("workers", 0), default=None, metavar="N",
                   help="0 runs the model in this process without Ray; N starts N Ray workers "
                        "(default: one per GPU; without a GPU, this process)")
    p.add_argument("--read-threads", type=whole_number("read threads", 1), default=None, metavar="N",
                   help="threads reading windows ahead in each worker (default: 2 beside a CPU model; beside a "
                        "GPU, enough to feed it from the host's cores; each costs a little memory)")
    p.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster ('auto' or host:port)")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """The options that ``detect`` and ``batch`` share."""
    _worker_arguments(p)
    p.add_argument("--score-thr", type=score, default=None, metavar="X",
                   help="drop merged bridges scoring below X (default: the operating point stored with the "
                        "model, else 0; 0 keeps everything the model reports)")
    # None stands for serving.engine.scene.DEFAULT_MAX_PIXELS (not imported here: it brings rasterio).
    p.add_argument("--max-pixels", type=whole_number("max pixels", 1), default=None, metavar="N",
                   help="refuse scenes of more than N pixels, width x height (default: 2,000,000,000)")
    p.add_argument("--bands", type=parse_bands, metavar="R,G,B",
                   help="1-based bands to use as R,G,B (or one band as grey); default: the first three")
    p.add_argument("--aoi", metavar="FILE|minx,miny,maxx,maxy[,CRS]",
                   help="search only this area: a vector file of polygons in any CRS (GeoPackage, GeoJSON, "
                        "shapefile ...) or a box, in degrees of WGS84 unless a CRS follows (e.g. "
                        "500000,5800000,502000,5802000,EPSG:32631); windows that do not meet it are not run and "
                        "bridges whose centre lies outside it are dropped (default: the whole scene)")
    _resolution_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _debug(p)


def _resolution_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gsd", type=positive_number("ground sample distance", "m"), metavar="M",
                   help="the scene's ground sample distance in metres a pixel (default: from its CRS and "
                        "transform; give it for a scene without a CRS)")
    p.add_argument("--resolution", type=resolution, metavar="M|native",
                   help="metres a pixel of the finest pyramid level (default: the scene resampled into the "
                        "range the model was made for, up or down; native: the scene's own pixels)")


def _add_plan(sub: Subparsers) -> None:
    p = _command(sub, "plan", plan.run, "show the pyramid levels and windows HBD-Net runs on a scene",
                 "Show the pyramid levels and windows HBD-Net runs on a scene. Sizes are width x height, in "
                 "pixels. Exit codes: 0 done, 2 a bad size, window or overlap, or a file that is not a raster.")
    p.add_argument("scene", help="a raster path/URL, or a size such as 16384 or 5000x3000 (width x height)")
    p.add_argument("--window", type=whole_number("window", 1, "px"), default=1024, metavar="PX", help="window side")
    p.add_argument("--overlap", type=whole_number("overlap", 0, "px"), default=200, metavar="PX",
                   help="overlap of neighbouring windows, less than --window")
    p.add_argument("--model", metavar="NAME|PATH", default=None,
                   help="the model whose ground sample distances plan the levels (default: the bundled 'default')")
    _resolution_arguments(p)


def _add_convert(sub: Subparsers) -> None:
    p = _command(sub, "convert", convert.run, "convert the authors' mmrotate checkpoint into an hbdnet model file",
                 "Convert the authors' released mmrotate checkpoint (Oriented_rcnn_HBDNet.pth) into an hbdnet "
                 "model file, with a report of the keys that did not match. Exit codes: 0 written, 2 a file or "
                 "config that cannot be read or written, 3 the checkpoint does not match the model.")
    p.add_argument("checkpoint", help="the authors' .pth (e.g. Oriented_rcnn_HBDNet.pth)")
    p.add_argument("-o", "--output", required=True, help="hbdnet model file to write")
    p.add_argument("--config", help="experiment YAML whose model section describes the architecture "
                   "(default: the faithful ResNet-50 HBD-Net)")
    p.add_argument("--iff", action="store_true", help="keep fusion_convs and turn inter-layer fusion on")
    p.add_argument("--allow-partial", action="store_true", help="write the model even if keys are missing or mis-shaped")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pickled Python objects in the file (trusted files only)")


def _add_train(sub: Subparsers) -> None:
    p = _command(sub, "train", train.run, "train HBD-Net on DOTA-format data, stage by stage (resumable)",
                 "Train HBD-Net stage by stage on DOTA-format data (DATA/images, DATA/labelTxt). Rerunning the "
                 "same command resumes from each stage's latest.pth. Exit codes: 0 done, 2 a bad config, data "
                 "folder or device, 130 interrupted (the stage is saved).")
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument("--data", required=True, help="folder with images/ and labelTxt/ (GLH-Bridge / DOTA layout)")
    p.add_argument("--work-dir", help="where checkpoints and logs go (default: runs/<config name>)")
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda or cuda:N (auto: cuda when present)")
    p.add_argument("--init", metavar="MODEL",
                   help="start from this trained model's weights (a file or a bundled name such as default): "
                        "fine-tuning; its architecture must be the config's (default: the config's init_weights)")
    p.add_argument("--stage", action="append", dest="stages", help="train only this stage (repeatable)")
    p.add_argument("--epochs", type=whole_number("epochs", 1),
                   help="override every stage's epochs (schedule steps scale with it)")
    p.add_argument("--max-iters", type=whole_number("max iters", 1),
                   help="stop each stage at this iteration and save it (latest.pth); "
                        "the same command without it (or with a larger one) resumes")
    p.add_argument("--checkpoint-every", type=whole_number("checkpoint every", 0),
                   help="iterations between resumable saves (default: the config's train.checkpoint_every)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parts(text: str) -> list[str]:
    from hbdnet.training.config import DETECTOR_PARTS, PART_PATHS

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if text == "all":
        return [p for p in DETECTOR_PARTS if p not in PART_PATHS]  # the whole detectors (no part twice)
    bad = [p for p in parts if p not in DETECTOR_PARTS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"give all, or some of {','.join(DETECTOR_PARTS)}, got {text!r}")
    return parts


def _add_finetune(sub: Subparsers) -> None:
    p = _command(sub, "finetune", finetune.run,
                 "adapt a model to your scenes from a corrected bridge layer (resumable)",
                 "Fine-tune a model on your own scenes from bridge polygons you corrected (for example a layer "
                 "hbdnet detect wrote, edited in QGIS: false boxes deleted, loose ones fixed, missed bridges "
                 "drawn). Labels and reviewed areas are polygon layers in any CRS. Windows without a label "
                 "inside the reviewed areas are taught as holding no bridge. Ctrl-C saves the run; the same "
                 "command resumes it. Exit codes: 0 written, 2 unusable scenes, labels, model or output, "
                 "130 interrupted (saved).")
    p.add_argument("--model", metavar="NAME|PATH", default="default",
                   help="the model to start from: a file or a bundled name")
    p.add_argument("--scene", dest="scenes", action="append", required=True, metavar="SCENE",
                   help="a georeferenced scene the labels are on (repeatable)")
    p.add_argument("--labels", required=True, help="the bridges: a polygon layer (GeoPackage, GeoJSON, ...)")
    p.add_argument("--reviewed", help="polygons where every bridge is labelled (default: the scenes' footprints)")
    p.add_argument("-o", "--output", required=True, help="the .safetensors model file to write")
    p.add_argument("--work-dir", help="checkpoints and log, for resuming (default: OUTPUT.finetune/ beside it)")
    p.add_argument("--train", type=_parts, default=["roi_head"], metavar="PARTS",
                   help="the parts that learn: all, or some of backbone,neck,rpn_head,roi_head,roi_classifier (the "
                        "box heads' class scores alone); when the trunk "
                        "(backbone, neck, rpn_head) learns, the base file's int8 trunk is made again, calibrated "
                        "on your scenes (default: roi_head)")
    p.add_argument("--epochs", type=whole_number("epochs", 1), default=8, help="epochs per stage")
    p.add_argument("--lr", type=positive_number("learning rate"), default=0.001,
                   help="the local stage's learning rate; the global stage's is half")
    p.add_argument("--bands", type=parse_bands, help="bands as R,G,B or one grey band, as for detect")
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda or cuda:N (auto: cuda when present)")
    p.add_argument("--max-iters", type=whole_number("max iters", 1),
                   help="stop each stage at this iteration and save it; the same command without it resumes")
    p.add_argument("--checkpoint-every", type=whole_number("checkpoint every", 1), default=10,
                   help="iterations between resumable saves")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a line every few iterations)")


def _add_export(sub: Subparsers) -> None:
    p = _command(sub, "export", export.run,
                 "write a model as safetensors (the shipping format: no pickle, optional fp16)",
                 "Write a trained model as safetensors, the shipping format (no pickle), with its config and "
                 "operating point inside. Exit codes: 0 written, 2 a model or output that cannot be used.")
    p.add_argument("model", help="hbdnet model file (.pth from train or convert, or .safetensors)")
    p.add_argument("-o", "--output", required=True,
                   help="the .safetensors file to write, e.g. hbdnet/weights/default.safetensors")
    p.add_argument("--fp16", action="store_true", help="store the large weights as float16 (half the size)")
    p.add_argument("--int8", metavar="DATA",
                   help="also store the detectors' convolutional trunks quantized to int8 (ONNX Runtime, what "
                        "--runtime auto runs on a CPU), calibrated on windows of the images of DATA "
                        "(images/ and labelTxt/, e.g. the training data)")
    p.add_argument("--int8-detectors", metavar="NAMES",
                   help="with --int8, quantize only these detectors' trunks, comma-separated (local, global.0 "
                        "...); the others run their float trunks (default: every detector)")
    p.add_argument("--score-thr", type=score, metavar="X",
                   help="operating point stored with the weights (used unless --score-thr is given at detect)")
    p.add_argument("--name", help="model name recorded in the metadata (default: the source's)")
    p.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                   help="extra metadata, e.g. --note val_AP50=0.71 (repeatable)")


def _add_eval(sub: Subparsers) -> None:
    p = _command(sub, "eval", evaluate.run, "evaluate a model on whole labelled images (AP50, AP75, mAP, by length)",
                 "Evaluate a model on whole labelled images (DATA/images, DATA/labelTxt in DOTA format): each "
                 "image goes through the same pyramid, workers and merge as a scene. Prints AP50, AP75, mAP "
                 "(0.50:0.95) and AP by bridge length (a length bin without any bridge has no AP: n/a). "
                 "Exit codes: 0 done, 2 a model, data folder or output that cannot be used.")
    _model_arguments(p)
    p.add_argument("--data", required=True, help="folder with images/ and labelTxt/")
    p.add_argument("--task", choices=["obb", "hbb"], default="obb", help="rotated (obb) or axis-aligned (hbb) IoU")
    p.add_argument("--merge", choices=["holistic", "authors"], default="holistic",
                   help="how window detections are merged (authors = per-level NMS 0.4, then 0.5 across levels)")
    p.add_argument("--metric", choices=["voc07", "area"], default="voc07",
                   help="11-point VOC07 AP (the authors') or area AP")
    p.add_argument("--workers", type=whole_number("workers", 0), default=0, help="Ray workers (0: in this process)")
    p.add_argument("--output", help="also write the metrics as JSON here (strict JSON: a metric without "
                                    "value, such as the AP of a length bin with no bridge, is null)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_detect(sub: Subparsers) -> None:
    p = _command(sub, "detect", detect.run, "detect bridges in one scene and write them as a GIS file",
                 "Detect bridges in one scene and write them as a GIS file (format from the -o extension: "
                 ".gpkg, .geojson or .fgb). Exit codes: 0 done, 1 the scene could not be processed, 2 usage or "
                 "setup error (arguments, model, output path).")
    p.add_argument("scene", help="GeoTIFF / COG / any raster: local path, http(s):// URL, /vsicurl/..., s3://")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file, .gpkg, .geojson or .fgb (default: ./<scene stem>_bridges.gpkg)")
    _run_arguments(p)
    p.add_argument("--progress-lines", action="store_true",
                   help="instead of a progress bar, a line 'hbdnet detect: progress DONE/TOTAL windows' on stderr "
                        "as windows complete: for programs that run hbdnet (the QGIS plugin)")


def _add_batch(sub: Subparsers) -> None:
    p = _command(sub, "batch", batch.run, "detect bridges in many scenes (files, folders, lists, STAC), resumably",
                 "Detect bridges in many scenes through one worker pool. INPUTS: raster files or URLs; folders "
                 "(searched recursively for .tif .tiff .vrt .jp2 .img); list files (.txt/.list: one path or URL "
                 "per line, # comments); STAC Items, Catalogs, Collections or ItemCollections (.json). One "
                 "output per scene in OUTDIR and a manifest OUTDIR/manifest.jsonl; re-running skips scenes done "
                 "with the same model and settings. Exit codes: 0 all ok, 1 some scene failed, 2 usage or setup "
                 "error, 130 interrupted.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="raster, folder, list file or STAC JSON")
    p.add_argument("--stac-search", metavar="URL",
                   help="also run the GeoTIFF assets of the items a STAC API item search finds (the API's root URL)")
    p.add_argument("--bbox", type=bbox, metavar="MINX,MINY,MAXX,MAXY",
                   help="the search's area in degrees of WGS84; it is also the area of interest searched in each "
                        "scene, unless --aoi says otherwise")
    p.add_argument("--collections", type=lambda t: [c.strip() for c in t.split(",") if c.strip()], metavar="A,B",
                   help="the search's collections")
    p.add_argument("--datetime", metavar="T|START/END", help="the search's time, as STAC writes it")
    p.add_argument("--max-items", type=whole_number("max items", 1), default=100, metavar="N",
                   help="at most N items from the search")
    p.add_argument("-o", "--output-dir", dest="outdir", required=True, metavar="OUTDIR",
                   help="folder for the outputs and manifest.jsonl (created if missing)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="gpkg", help="output format")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the scenes that failed in an earlier run (default: keep their failure)")
    _run_arguments(p)


def _add_serve(sub: Subparsers) -> None:
    from serving.api.settings import API_KEY_ENV, API_KEY_HEADER

    p = _command(sub, "serve", serve.run, "run the job service: POST a GeoTIFF, get the bridges back",
                 "Run the HTTP job service (OpenAPI docs at /docs; OGC API - Processes at /). The model (the "
                 "bundled 'default' unless --model) is loaded once and the workers stay up between jobs; jobs "
                 "and results persist in --data-dir. Exit codes: 0 stopped, 2 usage or setup error (model, "
                 "data folder).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=whole_number("port", 0), default=8000, help="port")
    _worker_arguments(p)
    p.add_argument("--data-dir", type=Path, default=Path("hbdnet-data"), metavar="DIR",
                   help="job database, uploads and results")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require this key in the {API_KEY_HEADER} header on every route but /healthz and /readyz "
                        f"(default: ${API_KEY_ENV}; unset: no key); an admin key, beside --keys-file")
    p.add_argument("--keys-file", type=Path, default=None, metavar="FILE",
                   help="API keys, one 'NAME KEY' or 'NAME KEY admin' a line (# comments): each key sees and "
                        "dismisses only its own jobs, an admin key all; jobs and logs carry the name, never the key")
    p.add_argument("--keep-results", type=duration, default=None, metavar="DURATION",
                   help="delete finished jobs' files this long after they finish (7d, 12h, 30m); the jobs stay "
                        "listed as expired and their results answer 410 (default: keep forever)")
    p.add_argument("--max-data", type=size_in_bytes, default=None, metavar="SIZE",
                   help="refuse new jobs (507) while the data folder is this large (500G, 20G ...); nothing "
                        "stored is deleted to make room (default: no limit)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (https://maps.example.org, or * for any) call the API from a "
                        "browser, with a key; repeatable (default: none, CORS off)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="postgresql://USER@HOST/DB: a job store shared by several hbdnet serve replicas (give them "
                        "all the same --data-dir, a folder every replica reaches); default: SQLite in the data "
                        "folder, for one server process")
    p.add_argument("--takeover-after", type=float, default=30.0, metavar="SECONDS",
                   help="with a shared --store, a job whose replica has not been heard of for this long is run "
                        "again by another (default: 30)")
    p.add_argument("--basemap", default=None, metavar="URL",
                   help="tiles under the web page's map, a template such as "
                        "https://tile.openstreetmap.org/{z}/{x}/{y}.png (default: none; the page then loads "
                        "nothing from elsewhere)")
    p.add_argument("--basemap-attribution", default=None, metavar="TEXT",
                   help="the basemap's attribution, shown on the map (e.g. '(c) OpenStreetMap contributors')")
    p.add_argument("--max-upload", type=size_in_bytes, default=4 * 2**30, metavar="SIZE",
                   help="largest upload in bytes (4G, 512M ... accepted); larger ones get 413")
    p.add_argument("--max-pixels", type=whole_number("max pixels", 1), default=None, metavar="N",
                   help="largest scene in pixels (default: 2,000,000,000); larger ones get 422")
    p.add_argument("--max-queue", type=whole_number("max queue", 1), default=64, metavar="N",
                   help="jobs waiting to run; more get 429")
    p.add_argument("--job-timeout", type=positive_number("job timeout", "seconds"), default=6 * 3600.0, metavar="S",
                   help="a job running longer than S seconds is stopped and failed")
    p.add_argument("--max-windows", type=whole_number("max windows", 1), default=2000, metavar="N",
                   help="a scene whose pyramid has more than N windows gets 422 (default 2000: half an hour on "
                        "a CPU worker)")
    p.add_argument("--max-job-seconds", type=positive_number("max job seconds", "seconds"), default=3600.0,
                   metavar="S", help="a job estimated to take longer than S seconds gets 422 (default 3600)")
    p.add_argument("--seconds-per-window", type=positive_number("seconds per window", "seconds"), default=1.0,
                   metavar="S", help="the estimate's seconds per window until a finished job has measured "
                                     "this server's (default 1.0, a CPU worker)")
    p.add_argument("--sync-max-pixels", type=whole_number("sync max pixels", 0), default=25_000_000, metavar="N",
                   help="largest scene a synchronous OGC execution waits for")
    p.add_argument("--allow-private-hrefs", action="store_true",
                   help="fetch hrefs on loopback, private and link-local addresses too (default: refused before "
                        "any request: a client could reach this machine's and its network's services)")
    p.add_argument("--allow-href-host", action="append", default=[], metavar="HOST", dest="allow_href_hosts",
                   help="fetch hrefs from HOST (a name or an address) although it is not public; repeatable")
    p.add_argument("--http-timeout", type=whole_number("http timeout", 1), default=60, metavar="S",
                   help="seconds one HTTP request reading a scene may take (connecting: at most 10)")
    p.add_argument("--max-checking", type=whole_number("max checking", 1), default=8, metavar="N",
                   help="submitted hrefs being opened at once; more get 429")
    _debug(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hbdnet", description="Holistic bridge detection in large scenes.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_plan, _add_convert, _add_train, _add_finetune, _add_export, _add_eval, _add_detect, _add_batch, _add_serve):
        add(sub)
    for p in sub.choices.values():
        one_line_errors(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CliError as err:
        if args.debug:
            raise
        print(f"hbdnet {args.command}: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"hbdnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
