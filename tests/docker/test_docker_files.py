"""The container files (``docker/``), verified as far as a machine without a container engine can:
hadolint finds nothing in either Dockerfile; the compose file is valid against the Compose
Specification's JSON schema (as vendored by check-jsonschema); every ``COPY`` source exists and is
not left out of the build context by ``.dockerignore``; and the CPU image's install steps, run the
same way in a fresh virtual environment, give an ``hbdnet`` that finds the Autzen footbridge with the
model inside the installed package. Not verified here: that the images build and run (no Docker
engine, no registry), the CUDA base image's contents, GPUs in compose."""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cuda"]
COMPOSE = REPO / "docker" / "compose.yaml"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def test_hadolint_finds_nothing():
    out = subprocess.run([tool("hadolint"), *map(str, DOCKERFILES)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_compose_file_is_valid_against_the_compose_specification(tmp_path):
    check = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    out = subprocess.run([*check, str(COMPOSE)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "compose.yaml"  # the check can fail: a misspelt key
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:\n      test:", "    healthchek:\n      test:", 1))
    assert subprocess.run([*check, str(broken)], capture_output=True, check=False).returncode != 0


def dockerignore() -> list[str]:
    return [p.strip().rstrip("/") for p in (REPO / ".dockerignore").read_text().splitlines()
            if p.strip() and not p.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_is_in_the_build_context(dockerfile):
    ignored = dockerignore()
    copies = [shlex.split(args) for word, args in instructions(dockerfile) if word == "COPY"]
    sources = [s for args in copies if not args[0].startswith("--from") for s in args[:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not any(fnmatch.fnmatch(source, p) or source.startswith(p + "/") for p in ignored), source
    assert any(args[0] == "--from=build" for args in copies)  # the runtime stage takes the venv only


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_images_run_as_a_user_with_a_healthcheck_and_labels(dockerfile):
    steps = instructions(dockerfile)
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    words = dict(runtime)
    assert words["USER"] not in ("root", "0")
    assert "/healthz" in words["HEALTHCHECK"] and words["ENTRYPOINT"] == '["hbdnet"]'
    assert "org.opencontainers.image.licenses=\"Apache-2.0\"" in words["LABEL"]


def test_the_cpu_images_install_steps_in_a_fresh_venv_give_a_working_hbdnet(tmp_path):
    """The build stage's RUN and COPY steps in order, here: ``python -m venv``, the pinned torch (from
    this machine's package index: the Dockerfile's PyTorch index is not reachable here), the
    project copied as the Dockerfile copies it, ``pip install ".[serve]"`` (not editable: the model
    and the page's files must be in the package)."""
    steps = instructions(DOCKERFILES[0])
    build = steps[:max(i for i, (w, _) in enumerate(steps) if w == "FROM")]
    venv, src = tmp_path / "venv", tmp_path / "src"
    src.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    # pip keeps this machine's own configuration (its PIP_* variables and the user's pip.conf under the
    # real HOME): that is where the CPU file of torch is found; without it pip takes a CUDA build of
    # several GB from the index, which filled CI's disk once.
    pip_env = {**env, **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
               "HOME": os.environ.get("HOME", str(tmp_path))}
    ran = []
    for word, args in build:
        if word == "RUN":
            command = args.replace("/opt/venv", str(venv)).split(" --index-url")[0]
            argv = shlex.split(command)
            if argv[0] == "python":  # before the venv exists: this Python, as the image's is its base
                argv[0] = sys.executable
            out = subprocess.run(argv, cwd=src, env=pip_env, capture_output=True, text=True, timeout=1200, check=False)
            assert out.returncode == 0, command + "\n" + out.stdout[-2000:] + out.stderr[-2000:]
            ran.append(command)
        elif word == "COPY":
            *sources, target = shlex.split(args)
            for source in sources:
                dest = src / target / Path(source).name if target.endswith("/") else src / target
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, dest, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(REPO / source, dest)
    assert [shlex.split(c)[:3] for c in ran] == [["python", "-m", "venv"], ["pip", "install", "torch==2.13.0"],
                                            ["pip", "install", ".[serve]"]]
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("nvidia*")), "the CPU image took a CUDA build of torch"
    for packaged in ("hbdnet/weights/default.safetensors", "serving/api/static/index.html",
                     "serving/api/static/vendor/leaflet/leaflet.js", "serving/outputs/styles/bridges.qml"):
        assert (site / packaged).is_file(), packaged
    out = subprocess.run([str(venv / "bin" / "hbdnet"), "detect", str(REPO / "samples" /
                          "autzen_willamette_footbridge_0.30m.tif"), "-o", str(tmp_path / "b.gpkg"), "-q"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0 and out.stdout.startswith("1 bridge found"), out.stdout + out.stderr
