"""Scenes the service reads from a URL, against a hostile file server on loopback: one that swaps a
GeoTIFF for VRT XML, one that never answers, one that counts every request it gets (issue 19, items
1 to 3). The file server is ``file_server.py``, in a process of its own."""

from __future__ import annotations

import ctypes
import glob
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import rasterio

from serving.testing.servers import free_port

VRT = """<VRTDataset rasterXSize="300" rasterYSize="300">
  <VRTRasterBand dataType="Byte" band="1">
    <SimpleSource><SourceFilename relativeToVRT="0">/vsicurl/{base}/SECRET.tif</SourceFilename>
      <SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
  <VRTRasterBand dataType="Byte" band="2">
    <SimpleSource><SourceFilename relativeToVRT="0">/etc/passwd</SourceFilename>
      <SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
</VRTDataset>
"""


class FileServer:
    """``file_server.py`` in a process of its own on a free loopback port: ``put`` a file, ``stall`` a
    path, ``hits`` counts the requests a path got."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("file_server.py")), str(folder),
                                      str(self.port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def put(self, name: str, data: bytes) -> str:
        (self.folder / name).write_bytes(data)
        return f"{self.url}/{name}"

    def stall(self, name: str) -> str:
        (self.folder / f"{name}.stall").touch()
        return f"{self.url}/{name}"

    def redirect(self, name: str, to: str) -> str:
        (self.folder / f"{name}.redirect").write_text(to)
        return f"{self.url}/{name}"

    def release(self) -> None:
        (self.folder / "release").touch()

    def hits(self, name: str | None = None) -> int:
        log = self.folder / "requests.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return sum(1 for line in lines if name is None or line.split(" ", 1)[1] == f"/{name}")

    def close(self) -> None:
        self.release()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def files(tmp_path) -> FileServer:
    server = FileServer(tmp_path / "www")
    yield server
    server.close()


def _clear_vsicurl_cache() -> None:
    """What a restart does to GDAL's /vsicurl/ cache (the server here runs in this test's process)."""
    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs", "libgdal*"))
    lib = ctypes.CDLL(libs[0]) if libs else ctypes.CDLL("libgdal.so")
    lib.VSICurlClearCache()


# -- 2. no VRT, ever --------------------------------------------------------------------------------

def test_a_scene_swapped_for_vrt_before_a_restart_is_refused_by_the_jobs_own_open(
        serve, client, scene_file, files, wait_job):
    files.put("scene.tif", scene_file("scene.tif", 300, 300).read_bytes())
    files.put("SECRET.tif", scene_file("secret.tif", 300, 300).read_bytes())
    big = scene_file("big.tif", 1500, 1500).read_bytes()
    href = f"{files.url}/scene.tif"

    first = serve(allow_private_hrefs=True)
    running = client.post(f"{first.url}/jobs", files={"file": ("big.tif", big)}).json()["jobID"]
    r = client.post(f"{first.url}/jobs", json={"href": href, "format": "gpkg"})
    assert r.status_code == 202, r.text  # a real GeoTIFF: accepted, waits behind the big job
    job = r.json()["jobID"]
    first.stop()  # the big job goes back to the queue, the href job never started
    files.put("scene.tif", VRT.format(base=files.url).encode())
    _clear_vsicurl_cache()

    second = serve(allow_private_hrefs=True)
    client.delete(f"{second.url}/jobs/{running}")
    doc = wait_job(client, f"{second.url}/jobs/{job}")
    assert doc["status"] == "failed", doc
    assert files.hits("SECRET.tif") == 0  # GDAL never parsed the VRT
    for leak in ("/etc/passwd", "SECRET", "vsicurl", "VRT"):
        assert leak not in doc["message"], doc["message"]
    assert "not a GeoTIFF, PNG, JPEG or JPEG 2000 file" in doc["message"], doc["message"]


def test_a_vrt_href_is_refused_at_submission_without_following_it(serve, client, files):
    files.put("scene.tif", VRT.format(base=files.url).encode())
    server = serve(allow_private_hrefs=True)
    r = client.post(f"{server.url}/jobs", json={"href": f"{files.url}/scene.tif"})
    assert r.status_code == 422, r.text
    assert files.hits("SECRET.tif") == 0
    assert "/etc/passwd" not in r.text and "vsicurl" not in r.text


def test_the_cli_refuses_a_vrt_url(files):
    """``hbdnet detect`` on a URL opens with the same drivers as the service."""
    from serving.detect import DetectOptions, open_checked

    files.put("scene.tif", VRT.format(base=files.url).encode())
    from serving.engine.scene import SceneError

    with pytest.raises(SceneError):
        open_checked(f"{files.url}/scene.tif", DetectOptions())
    assert files.hits("SECRET.tif") == 0


# -- 3. no server-side request forgery --------------------------------------------------------------

def test_hrefs_to_private_addresses_are_refused_before_any_request(serve, client, scene_file, files):
    """Loopback, private, link-local, metadata and multicast hosts, by name or number: 422 and no
    request at the target; an open port and a closed one get the same answer."""
    files.put("scene.tif", scene_file("scene.tif", 300, 300).read_bytes())
    closed = free_port()
    server = serve()
    details = {}
    for href in (f"{files.url}/scene.tif", f"http://127.0.0.1:{closed}/scene.tif",
                 f"http://localhost:{files.port}/scene.tif", f"http://[::1]:{files.port}/scene.tif",
                 f"http://2130706433:{files.port}/scene.tif", f"{server.url}/metrics",
                 "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.tif", "http://192.168.1.1/a.tif",
                 "http://224.0.0.1/a.tif", f"http://0.0.0.0:{files.port}/a.tif"):
        r = client.post(f"{server.url}/jobs", json={"href": href})
        assert r.status_code == 422, (href, r.text)
        details[href] = r.json()["detail"]
        assert "not a public address" in details[href], details[href]
    assert files.hits() == 0  # not one request reached the file server
    open_port, closed_port = details[f"{files.url}/scene.tif"], details[f"http://127.0.0.1:{closed}/scene.tif"]
    assert open_port.replace(str(files.port), "PORT") == closed_port.replace(str(closed), "PORT")
    ogc = client.post(f"{server.url}/processes/detect-bridges/execution",
                      json={"inputs": {"image": {"href": f"{files.url}/scene.tif"}}})
    assert ogc.status_code in (400, 422) and files.hits() == 0


def test_an_operator_may_allow_private_hosts(serve, client, scene_file, files):
    files.put("scene.tif", scene_file("scene.tif", 300, 300).read_bytes())
    by_name = serve(allow_href_hosts=["127.0.0.1"])
    assert client.post(f"{by_name.url}/jobs", json={"href": f"{files.url}/scene.tif"}).status_code == 202
    assert client.post(f"{by_name.url}/jobs", json={"href": f"http://localhost:{files.port}/scene.tif"}
                       ).status_code == 422  # only the hosts named
    every = serve(allow_private_hrefs=True)
    assert client.post(f"{every.url}/jobs", json={"href": f"{files.url}/scene.tif"}).status_code == 202


def test_a_redirect_to_a_host_not_allowed_is_not_followed(serve, client, scene_file, files, wait_job):
    """The operator allows the file server by address; it answers 302 to itself by another name, one
    that is not allowed (as a public server could answer 302 to 127.0.0.1)."""
    files.put("SECRET.tif", scene_file("secret.tif", 300, 300).read_bytes())
    href = files.redirect("scene.tif", f"http://localhost:{files.port}/SECRET.tif")
    server = serve(allow_href_hosts=["127.0.0.1"])
    r = client.post(f"{server.url}/jobs", json={"href": href})
    assert r.status_code == 422, r.text
    assert files.hits("scene.tif") >= 1 and files.hits("SECRET.tif") == 0


# -- 1. a silent href does not freeze the service ---------------------------------------------------

def test_hanging_hrefs_leave_the_service_answering(serve, client, files):
    """50 submissions of a URL whose server accepts the connection and never answers: past
    ``max_checking`` they get 429 at once, and /healthz, /readyz and /jobs answer meanwhile."""
    import concurrent.futures as cf

    hrefs = [files.stall(f"s{i}.tif") for i in range(50)]
    server = serve(allow_private_hrefs=True, max_checking=8, http_timeout_s=3)
    with cf.ThreadPoolExecutor(50) as pool, httpx.Client(timeout=60) as posting:
        posts = [pool.submit(posting.post, f"{server.url}/jobs", json={"href": h}) for h in hrefs]
        deadline = time.monotonic() + 10
        while files.hits() < 8 and time.monotonic() < deadline:  # the checks have reached the silent server
            time.sleep(0.02)
        latencies = []
        for _ in range(20):
            for route in ("/healthz", "/readyz", "/jobs"):
                t = time.perf_counter()
                assert client.get(f"{server.url}{route}", timeout=5).status_code == 200
                latencies.append(time.perf_counter() - t)
        statuses = Counter(p.result().status_code for p in posts)
    # under 100 ms (one outlier allowed on a CPU shared with other work; measured: max 90 ms, median 1.4 ms)
    assert sorted(latencies)[-2] < 0.1 and max(latencies) < 0.5, sorted(latencies)[-5:]
    assert statuses[429] == 50 - 8 and statuses[422] == 8, statuses  # the 8 checked time out: 422
    assert files.hits() <= 8 * 2 * 2  # HTTP timeouts and one retry: no request goes on for good


def test_with_a_cluster_the_workers_read_a_copy_never_the_href(serve, client, scene_file, files, wait_job,
                                                                 tiny_checkpoint):
    """With ``--ray-address`` the workers may run on machines that cannot reach the guard proxy: the
    service copies an href's scene into the job's folder through the proxy, and the workers are given
    the copy (a pool in this process stands for the cluster's, recording what it is given)."""
    from serving.engine.detectors import ModelSpec
    from serving.engine.pools import PoolConfig, make_pool

    files.put("scene.tif", scene_file("scene.tif", 300, 300).read_bytes())
    given: list[str] = []

    def pool():
        p = make_pool(ModelSpec(path=str(tiny_checkpoint)), PoolConfig(workers=0))
        run = p.run
        p.run = lambda spec, items, *a, **k: given.append(spec.uri) or run(spec, items, *a, **k)
        return p

    server = serve(allow_href_hosts=["127.0.0.1"], ray_address="127.0.0.1:1", pool_factory=pool)
    r = client.post(f"{server.url}/jobs", json={"href": f"{files.url}/scene.tif"})
    assert r.status_code == 202, r.text
    assert wait_job(client, r.headers["location"])["status"] == "successful"
    folder = server.service.job_dir(r.json()["jobID"])
    assert given == [str(folder / "fetched.tif")]
    assert not (folder / "fetched.tif").exists()  # the results are kept, not the copy
    features = client.get(f"{r.headers['location']}/results").json()["features"]
    assert {f["properties"]["scene"] for f in features} <= {f"{files.url}/scene.tif"}
