"""The service on loopback: uvicorn in a thread (or ``hbdnet serve`` in a subprocess), a tiny real
hbdnet checkpoint, real GeoTIFFs, and httpx."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from affine import Affine

from serving.engine.detectors import ModelSpec
from serving.testing.servers import free_port

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def write_scene(path: Path, height: int, width: int, *, count: int = 3, seed: int = 0, crs: str | None = "EPSG:32631",
                block: int = 128) -> Path:
    """A random uint8 GeoTIFF at 0.5 m, its top-left corner at (500000, 5800000) in ``crs``."""
    data = np.random.default_rng(seed).integers(0, 256, (count, height, width), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint8",
                       crs=crs, transform=Affine(0.5, 0, 500000.0, 0, -0.5, 5800000.0), tiled=True,
                       blockxsize=block, blockysize=block, compress="deflate") as ds:
        ds.write(data)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real hbdnet checkpoint (resnet_tiny, 128 px windows) with random weights."""
    import torch

    from hbdnet.checkpoint import save_checkpoint
    from hbdnet.models.build import ModelConfig
    from hbdnet.models.hbdnet import HBDNet, HBDNetConfig

    def tiny(**kw) -> ModelConfig:
        return ModelConfig(backbone="resnet_tiny", fpn_channels=16, rpn_feat_channels=16, fc_channels=32,
                           rpn_nms_pre=100, rpn_max_per_img=50, score_thr=0.0, **kw)

    torch.manual_seed(0)
    cfg = HBDNetConfig(local=tiny(), global_detector=tiny(finest_scale=56.0, use_ssrw=True), window=128, overlap=32)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth", HBDNet(cfg), meta={"name": "tiny"})


class Server:
    """The app on uvicorn in a thread of this process, on a free loopback port."""

    def __init__(self, app, port: int):
        import uvicorn

        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                     lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> Server:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    @property
    def service(self):
        return self.app.state.service

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)


@pytest.fixture
def serve(tmp_path, tiny_checkpoint) -> Iterator[Callable[..., Server]]:
    """Factory: ``serve(**settings)`` starts the service (in-process pool unless ``workers`` says otherwise,
    or ``pool_factory`` makes it; the tiny model, data in ``tmp_path/data``) and stops it after the test."""
    from serving.api.app import create_app
    from serving.api.service import JobService
    from serving.api.settings import Settings
    from serving.model_ref import model_ref


    started: list[Server] = []

    def start(**settings) -> Server:
        settings.setdefault("data_dir", tmp_path / "data")
        settings.setdefault("workers", 0)
        model = settings.pop("model_ref", None) or model_ref(ModelSpec(path=str(tiny_checkpoint)),
                                                             name="tiny")
        pool_factory = settings.pop("pool_factory", None)
        s = Settings(**settings)
        server = Server(create_app(s, JobService(s, model, pool_factory=pool_factory)), free_port()).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def wait_for(client: httpx.Client, url: str, statuses=("successful", "failed", "dismissed"), timeout: float = 120,
             headers: dict | None = None) -> dict:
    """Poll a job until its status is one of ``statuses``; return the last document."""
    deadline = time.monotonic() + timeout
    while True:
        doc = client.get(url, headers=headers).json()
        if doc["status"] in statuses:
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {doc['status']} after {timeout} s: {doc}")
        time.sleep(0.05)


@pytest.fixture
def scene_file(tmp_path) -> Callable[..., Path]:
    """Factory: ``scene_file(name, height, width, **options)`` writes a GeoTIFF (see ``write_scene``)."""
    return lambda name, height, width, **kw: write_scene(tmp_path / name, height, width, **kw)


@pytest.fixture
def wait_job() -> Callable[..., dict]:
    return wait_for


def multipart_head(boundary: str, filename: str = "big.tif") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: image/tiff\r\n\r\n").encode()


def stream_upload(url: str, size: int, *, chunk: int = 1 << 16, declare_length: bool = False,
                  headers: dict | None = None) -> tuple[int, bytes, int]:
    """POST a multipart upload of ``size`` generated bytes over a raw socket, chunked (no Content-Length)
    unless ``declare_length``; stop sending as soon as the server answers. Returns (status, body, bytes sent)."""
    import select
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    boundary = "hbdnetboundary1234"
    head, tail = multipart_head(boundary), f"\r\n--{boundary}--\r\n".encode()
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}",
             f"Content-Type: multipart/form-data; boundary={boundary}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(head) + size + len(tail)}" if declare_length else "Transfer-Encoding: chunked")
    block = bytes(range(256)) * (chunk // 256)
    sent = 0

    def frame(data: bytes) -> bytes:
        return data if declare_length else b"%x\r\n" % len(data) + data + b"\r\n"

    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answered = False
        try:
            sock.sendall(frame(head))
            while sent < size:
                if select.select([sock], [], [], 0)[0]:
                    answered = True
                    break
                n = min(chunk, size - sent)
                sock.sendall(frame(block[:n]))
                sent += n
            if not answered:
                sock.sendall(frame(tail) + (b"" if declare_length else b"0\r\n\r\n"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = b""
        while b"\r\n\r\n" not in response:
            data = sock.recv(65536)
            if not data:
                break
            response += data
        head_text, _, body = response.partition(b"\r\n\r\n")
        status = int(head_text.split(b" ", 2)[1])
        length = [int(l.split(b":")[1]) for l in head_text.split(b"\r\n") if l.lower().startswith(b"content-length:")]
        while length and len(body) < length[0]:
            data = sock.recv(65536)
            if not data:
                break
            body += data
    return status, body, sent


@pytest.fixture
def upload_stream() -> Callable[..., tuple[int, bytes, int]]:
    return stream_upload


@pytest.fixture
def static_server() -> Iterator[Callable[[Path], str]]:
    """Factory: ``static_server(folder)`` serves ``folder`` over HTTP on loopback (Range requests, as GDAL's
    /vsicurl/ reads) and returns its URL. In a process of its own: GDAL holds this process's GIL while it
    opens a URL, so a server in a thread here could not answer."""
    import subprocess
    import sys

    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> str:
        port = free_port()
        code = ("import sys, uvicorn; from fastapi import FastAPI; from fastapi.staticfiles import StaticFiles; "
                "app = FastAPI(); app.mount('/', StaticFiles(directory=sys.argv[1])); "
                "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')")
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(folder), str(port)]))
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return f"http://127.0.0.1:{port}"
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


# -- PostgreSQL: a real server of the tests' own, in a temporary folder --------------------------------

def _postgres_bin() -> Path | None:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on a free loopback port (``initdb`` in a temporary folder, trust auth), for
    the session; as root it runs as the ``postgres`` user, as PostgreSQL requires. Skips where
    PostgreSQL is not installed (``.ci/run`` installs it). Yields a function that makes a new empty
    database and returns its URL."""
    import os
    import subprocess
    import uuid

    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    import shutil
    import tempfile

    # not under pytest's own folder, which only root may enter
    root = Path(tempfile.mkdtemp(prefix="hbdnet-postgres-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(*cmd: str) -> None:
        out = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stdout + out.stderr

    run(str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log.txt"), "-w", "-o",
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
    base = f"postgresql://postgres@127.0.0.1:{port}"

    def new_database() -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"{base}/{name}"

    try:
        yield new_database
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
