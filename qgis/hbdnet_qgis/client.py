"""A small client of ``hbdnet serve``'s job API on the standard library (QGIS's Python has no extra
packages): submit a file or a URL, follow the job, cancel it, fetch its GeoPackage. Every failure is a
``ServiceError`` with one line that says what happened."""

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid

KEY_HEADER = "X-API-Key"
CHUNK = 1 << 20


class ServiceError(Exception):
    pass


class Service:
    def __init__(self, url, key=None, timeout=60):
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def _request(self, method, path, data=None, headers=None):
        url = path if path.startswith(("http://", "https://")) else f"{self.url}{path}"
        headers = dict(headers or {})
        if self.key:
            headers[KEY_HEADER] = self.key
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            detail = ""
            try:
                doc = json.loads(exc.read().decode("utf-8", "replace"))
                detail = doc.get("detail") or doc.get("title") or ""
            except (ValueError, AttributeError):
                pass
            if exc.code == 401:
                raise ServiceError("the hbdnet server refused the API key (401): set the key in the tool's "
                                   "authentication setting") from None
            raise ServiceError(f"the hbdnet server answered {exc.code}: {detail or exc.reason}") from None
        except urllib.error.URLError as exc:
            raise ServiceError(f"cannot reach the hbdnet server at {self.url}: {exc.reason}") from None
        except OSError as exc:  # a timeout or a reset connection
            raise ServiceError(f"cannot reach the hbdnet server at {self.url}: {exc}") from None

    def _json(self, method, path, data=None, headers=None):
        with self._request(method, path, data, headers) as response:
            return json.loads(response.read().decode("utf-8"))

    def submit_file(self, path, options, cancelled=lambda: False, sent=lambda done, total: None):
        """Upload ``path`` (streamed, multipart) with ``options``; returns the job document."""
        boundary = uuid.uuid4().hex
        name = os.path.basename(path).replace('"', "")
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                "Content-Type: image/tiff\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = os.path.getsize(path)

        def body():
            yield head
            done = 0
            with open(path, "rb") as f:
                while True:
                    if cancelled():
                        raise ServiceError("cancelled during the upload")
                    chunk = f.read(CHUNK)
                    if not chunk:
                        break
                    done += len(chunk)
                    sent(done, size)
                    yield chunk
            yield tail

        query = urllib.parse.urlencode(options)
        return self._json("POST", f"/jobs?{query}", data=body(), headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail))})

    def submit_href(self, href, options):
        body = json.dumps({"href": href, **options}).encode()
        return self._json("POST", "/jobs", data=body, headers={"Content-Type": "application/json"})

    def status(self, job_id):
        return self._json("GET", f"/jobs/{job_id}")

    def cancel(self, job_id):
        return self._json("DELETE", f"/jobs/{job_id}")

    def download(self, job_id, fmt, dest):
        with self._request("GET", f"/jobs/{job_id}/results?f={fmt}") as response, open(dest, "wb") as out:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
