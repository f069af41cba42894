"""The web page at ``/`` in a real browser: Debian's Chromium, driven by Playwright for Python (no
browser download; ``.ci/run`` installs Chromium when it is missing). Upload the Autzen sample through
the page's file input, watch the windows advance, see one box on the footbridge over the quicklook,
click it and read its attributes, download a layer; cancel a running job; abort an upload; a server
with an API key.

``HBDNET_SCREENSHOTS=DIR`` also writes the map's screenshot there (the README's picture is made so:
``HBDNET_SCREENSHOTS=docs/images python -m pytest tests/serving/api/test_web_page_browser.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

REPO = Path(__file__).resolve().parents[3]
AUTZEN = REPO / "samples" / "autzen_willamette_footbridge_0.30m.tif"
# As the machine's own probe starts it: no background requests out of a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "page-test-key-0123456789"


def chromium_path() -> str | None:
    return os.environ.get("HBDNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Tab:
    """A page in a fresh browser context, with what it logged and every URL it asked for."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1200, "height": 1300}, accept_downloads=True)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.requests: list[tuple[str, dict]] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append((r.url, r.headers)))
        self.page.goto(url)

    def job_row(self):
        return self.page.locator("#jobs tbody tr[data-job]").first

    def wait_status(self, statuses: tuple[str, ...], timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status = self.job_row().get_attribute("data-status") if self.job_row().count() else None
            if status in statuses:
                return status
            assert time.monotonic() < deadline, f"job still {status}"
            time.sleep(0.1)

    def wait_true(self, expression: str, timeout: float = 30) -> None:
        """Poll ``expression`` in the page (``wait_for_function`` evaluates a string, which the page's
        Content-Security-Policy forbids, rightly)."""
        deadline = time.monotonic() + timeout
        while not self.page.evaluate(f"() => Boolean({expression})"):
            assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
            time.sleep(0.05)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser):
    opened: list[Tab] = []

    def open_tab(url: str) -> Tab:
        opened.append(Tab(browser, url))
        return opened[-1]

    yield open_tab
    for t in opened:
        t.close()


def mercator(lon: float, lat: float) -> tuple[float, float]:
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)


def centre(box: dict) -> tuple[float, float]:
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_autzen_through_the_page_shows_the_footbridge_on_the_map(serve, tab, client, tmp_path):
    from serving.model_ref import resolve_model

    model = resolve_model("default", "cpu")
    server = serve(model_ref=model)
    t = tab(server.url)
    page = t.page
    assert page.input_value("#score-input") == str(model.score_thr)  # the model's operating point
    page.set_input_files("#file-input", str(AUTZEN))
    page.click("#submit-button")

    done_seen: set[int] = set()
    deadline = time.monotonic() + 300
    while True:
        assert time.monotonic() < deadline, "the job did not finish"
        # one read of the row, so that its status and its bar are of the same refresh
        row = page.evaluate("""() => { const r = document.querySelector('#jobs tbody tr[data-job]');
            const bar = r && r.querySelector('progress');
            return r && {status: r.dataset.status, done: bar ? bar.value : null}; }""")
        if row is not None:
            if row["status"] == "successful":
                break
            assert row["status"] in ("accepted", "running"), row
            if row["done"] is not None:
                done_seen.add(int(row["done"]))
        time.sleep(0.2)
    total = server.service.store.page(1, 0)[0][0].windows_total
    assert total == 27
    moving = sorted(d for d in done_seen if 0 < d < total)
    assert len(moving) >= 2, f"the progress bar did not move as windows completed: {sorted(done_seen)}"

    page.click("#jobs tbody tr[data-job] button.open")
    page.wait_for_selector("img.quicklook")
    page.wait_for_selector("path.bridge")
    assert page.locator("path.bridge").count() == 1
    time.sleep(0.5)  # the fit's zoom animation

    # The box where the bridge is: its centre, in the quicklook's frame, is where the GeoJSON's
    # polygon lies in the quicklook's bbox (Web Mercator, both computed here, not by the page).
    job_id = page.get_attribute("#jobs tbody tr[data-job]", "data-job")
    bridges = client.get(f"{server.url}/jobs/{job_id}/results?f=geojson").json()
    (feature,) = bridges["features"]
    ring = np.asarray(feature["geometry"]["coordinates"][0][:-1])
    bx, by = np.mean([mercator(lon, lat) for lon, lat in ring], axis=0)
    west, south, east, north = client.get(f"{server.url}/jobs/{job_id}/quicklook").json()["bbox"]
    (x0, y0), (x1, y1) = mercator(west, north), mercator(east, south)
    expected = ((bx - x0) / (x1 - x0), (by - y0) / (y1 - y0))
    image = page.locator("img.quicklook").bounding_box()
    cx, cy = centre(page.locator("path.bridge").bounding_box())
    shown = ((cx - image["x"]) / image["width"], (cy - image["y"]) / image["height"])
    off = ((shown[0] - expected[0]) * image["width"], (shown[1] - expected[1]) * image["height"])
    assert abs(off[0]) < 3 and abs(off[1]) < 3, f"the box is {off} px from where it belongs on the quicklook"
    # and that is the footbridge: samples/README.md puts its centre at scene pixel (945, 3450)
    assert abs(feature["properties"]["cx_px"] - 945) < 80 and abs(feature["properties"]["cy_px"] - 3450) < 80

    shot = tmp_path / "web-page-autzen.png"
    page.screenshot(path=str(shot))
    if os.environ.get("HBDNET_SCREENSHOTS"):
        folder = Path(os.environ["HBDNET_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, folder / shot.name)

    page.locator("path.bridge").click()
    popup = page.locator(".leaflet-popup-content").inner_text()
    props = feature["properties"]
    assert f"{props['score']:.3f}" in popup and f"{props['length_m']:.1f} m" in popup
    assert f"{props['width_m']:.1f} m" in popup and f"{props['bearing_deg']:.1f}°" in popup
    assert page.locator("#bridges tbody tr").count() == 1

    with page.expect_download() as download:
        page.click("#downloads button[data-format=gpkg]")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "autzen_willamette_footbridge_0.30m_bridges.gpkg"
    import pyogrio

    assert pyogrio.read_info(saved, layer="bridges")["features"] == 1
    assert t.console == []


def test_cancel_from_the_page_stops_the_running_job(serve, tab, scene_file):
    server = serve()
    detector = server.service.pool._worker.detector
    detect = detector.detect
    detector.detect = lambda images, windows, **kw: time.sleep(0.2) or detect(images, windows, **kw)
    t = tab(server.url)
    t.page.set_input_files("#file-input", str(scene_file("slow.tif", 1500, 1500)))
    t.page.click("#submit-button")
    t.wait_status(("running",), timeout=60)
    t.wait_true("document.querySelector('#jobs tbody tr[data-job] progress')?.value > 0")
    t.page.click("#jobs tbody tr[data-job] button.cancel")
    assert t.wait_status(("dismissed", "successful"), timeout=30) == "dismissed"
    assert t.job_row().locator("td.state").inner_text() == "cancelled"
    job = server.service.store.page(1, 0)[0][0]
    assert job.status == "dismissed" and job.windows_done < job.windows_total
    assert t.console == []


def test_an_upload_shows_its_progress_and_can_be_aborted(serve, tab, scene_file):
    server = serve()
    t = tab(server.url)
    # The browser's own network throttling (DevTools protocol): 4 MB at 1 MB/s takes seconds.
    cdp = t.context.new_cdp_session(t.page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                   "uploadThroughput": 1_000_000})
    scene = scene_file("large.tif", 1200, 1200)
    scene.write_bytes(scene.read_bytes() + bytes(4 * 2**20))  # a valid TIFF with 4 MB of padding
    t.page.set_input_files("#file-input", str(scene))
    t.page.click("#submit-button")
    t.wait_true("document.querySelector('#upload-progress').value > 0.05")
    assert not t.page.locator("#upload").is_hidden()
    assert " of " in t.page.inner_text("#upload-text") and "MB" in t.page.inner_text("#upload-text")
    t.page.click("#upload-abort")
    t.page.wait_for_selector("#upload", state="hidden")
    assert t.page.inner_text("#submit-error") == "Upload aborted."
    time.sleep(1.0)
    assert server.service.store.page(10, 0)[1] == 0  # no job was made, and no part of the upload is kept
    assert not list(server.service.settings.jobs_dir.rglob("*input*"))


def test_with_an_api_key_the_page_asks_for_it_once_and_never_puts_it_in_a_url(serve, tab, scene_file, tmp_path):
    server = serve(api_key=KEY)
    t = tab(server.url)
    page = t.page
    assert page.is_visible("#key-panel")
    assert httpx.get(f"{server.url}/", headers={"Accept": "application/json"}).status_code == 401
    page.fill("#key-input", "not-the-key-at-all")
    page.click("#key-form button")
    t.wait_true("document.querySelector('#key-error').textContent.includes('refused')")
    assert page.is_visible("#key-panel")

    page.fill("#key-input", KEY)
    page.click("#key-form button")
    page.wait_for_selector("#key-panel", state="hidden")
    page.set_input_files("#file-input", str(scene_file("small.tif", 300, 300)))
    page.click("#submit-button")
    assert t.wait_status(("successful", "failed"), timeout=60) == "successful"
    page.click("#jobs tbody tr[data-job] button.open")
    page.wait_for_selector("img.quicklook")
    with page.expect_download() as download:
        page.click("#downloads button[data-format=geojson]")
    saved = tmp_path / "bridges.geojson"
    download.value.save_as(saved)
    assert json.loads(saved.read_text())["type"] == "FeatureCollection"

    page.reload()  # asked once: the tab keeps the key
    page.wait_for_selector("#jobs tbody tr[data-job]")
    assert page.is_hidden("#key-panel")
    assert page.evaluate("Object.keys(localStorage).length") == 0  # kept in this tab only

    api_calls = [(url, headers) for url, headers in t.requests if "/jobs" in url]
    assert api_calls and all(headers.get("x-api-key") in (KEY, "not-the-key-at-all") for _, headers in api_calls)
    assert not any(KEY in url or "not-the-key" in url for url, _ in t.requests)
    assert [m for m in t.console if "401" not in m] == []  # the refused key's 401 is logged by the browser


def test_a_dropped_file_is_submitted(serve, tab, scene_file):
    server = serve()
    t = tab(server.url)
    data = list(scene_file("dropped.tif", 300, 300).read_bytes())
    dropped = t.page.evaluate_handle("""(bytes) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], "dropped.tif", {type: "image/tiff"}));
        return transfer; }""", data)
    t.page.dispatch_event("#drop-zone", "drop", {"dataTransfer": dropped})
    assert t.page.inner_text("#file-name") == "dropped.tif"
    t.page.click("#submit-button")
    assert t.wait_status(("successful", "failed"), timeout=60) == "successful"
    assert t.job_row().locator("td").first.inner_text() == "dropped.tif"
    assert server.service.store.page(1, 0)[0][0].options["filename"] == "dropped.tif"


def test_refusals_and_failures_reach_the_page_in_words(serve, tab, scene_file):
    server = serve()
    detector = server.service.pool._worker.detector

    def broken(*args, **kwargs):
        raise RuntimeError("the detector broke on purpose")

    t = tab(server.url)
    t.page.fill("#href-input", "http://127.0.0.1:9/scene.tif")  # loopback: refused before any request
    t.page.click("#submit-button")
    t.wait_true("document.querySelector('#submit-error').textContent.length > 0")
    assert "is not a public address" in t.page.inner_text("#submit-error")
    assert server.service.store.page(10, 0)[1] == 0

    detector.detect = broken
    t.page.set_input_files("#file-input", str(scene_file("s.tif", 300, 300)))
    t.page.click("#submit-button")
    assert t.wait_status(("successful", "failed"), timeout=60) == "failed"
    assert t.job_row().locator("td.state").inner_text() == "failed"
    reason = t.page.inner_text("#jobs tbody tr[data-reason-of] td.reason")
    assert "the detector broke on purpose" in reason
    assert [m for m in t.console if "422" not in m] == []  # the browser logs the refused submission
