"""A hostile file server for tests, run as ``python file_server.py FOLDER PORT``: serves FOLDER's files
with Range requests (as GDAL's /vsicurl/ reads them), appends every request's path to
``FOLDER/requests.log``, for a path whose ``NAME.stall`` marker exists accepts the connection and
never answers (until ``FOLDER/release`` exists), for one with a ``NAME.redirect`` file answers 302
to the URL in it, and for one with a ``NAME.norange`` marker ignores Range (the whole file, 200, as a
server without range requests does). A process of its own: GDAL holds the test process's GIL
during some of its network reads, so a server in a thread there could not answer."""

from __future__ import annotations

import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(sys.argv[1]) if __name__ == "__main__" else Path()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        name = self.path.split("?")[0].lstrip("/")
        with open(ROOT / "requests.log", "a") as log:
            log.write(f"{self.command} /{name}\n")
        if name and (ROOT / f"{name}.stall").exists():
            while not (ROOT / "release").exists():
                time.sleep(0.05)
            self.close_connection = True
            return
        redirect = ROOT / f"{name}.redirect"
        if name and redirect.is_file():
            self.send_response(302)
            self.send_header("Location", redirect.read_text().strip())
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = ROOT / name
        if not name or "/" in name or not file.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = file.read_bytes()
        start, end = 0, len(data) - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        ranges = not (ROOT / f"{name}.norange").exists()
        if m and ranges:
            start, end = int(m.group(1)), min(end, int(m.group(2) or end))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        if ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            self.wfile.write(data[start:end + 1])


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    server.serve_forever()
