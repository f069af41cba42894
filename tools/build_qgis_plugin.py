"""Build the installable QGIS plugin: ``dist/hbdnet_qgis-VERSION.zip`` holding the folder
``hbdnet_qgis/`` (QGIS: Plugins > Manage and Install Plugins > Install from ZIP).

    python tools/build_qgis_plugin.py [-o DIR]
"""

from __future__ import annotations

import argparse
import configparser
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "qgis" / "hbdnet_qgis"
FILES = ("*.py", "metadata.txt", "icon.svg")


def version() -> str:
    meta = configparser.ConfigParser()
    meta.read(PLUGIN / "metadata.txt", encoding="utf-8")
    return meta["general"]["version"]


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"hbdnet_qgis-{version()}.zip"
    files = sorted({p for pattern in FILES for p in PLUGIN.glob(pattern)})
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, f"{PLUGIN.name}/{path.name}")
        zf.write(REPO / "LICENSE", f"{PLUGIN.name}/LICENSE")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("dist"), help="where the zip goes (default: dist)")
    print(build(parser.parse_args().out_dir))


if __name__ == "__main__":
    main()
