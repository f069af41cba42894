"""Taking a scene in: an upload streamed to disk in chunks (never held in memory, refused past the
size limit at once), then opened as a raster before a job is accepted.

Nothing the client sends becomes a path: the upload is written to ``JOB_DIR/input`` (the job folder
named by a uuid4), and the client's file name is kept only as a label. Only raster formats of
``SCENE_DRIVERS`` are opened (``serving.engine.scene.open_raster``, as every open of a scene), so a
scene cannot be a GDAL VRT (an XML file that can point GDAL at any file on the server).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from serving.api.errors import ApiError
from serving.detect import DetectOptions
from serving.engine.gdal_errors import first_line
from serving.engine.scene import SceneError, SceneInfo, gdal_path, open_raster, open_scene, shown_as

CHUNK = 1 << 20  # bytes written per disk write
MAX_FIELD_BYTES = 64 * 1024
MULTIPART_SLACK = 1 << 20  # bytes of multipart framing and option fields allowed beyond the file


@dataclass
class Upload:
    path: Path
    filename: str  # the client's name for it, a label only
    size: int
    fields: dict[str, str] = field(default_factory=dict)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"upload larger than the limit of {limit:,} bytes")


def check_length(request: Request, limit: int) -> None:
    """413 before reading a byte when Content-Length already says the body is too large."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
        raise too_large(limit)


async def receive(request: Request, dest: Path, limit: int) -> Upload:
    """Stream the request's file to ``dest``: a ``multipart/form-data`` part named ``file`` (other
    parts are option fields), or the whole body for ``image/*`` and ``application/octet-stream``.

    Raises ApiError 413 (past ``limit`` bytes: the partial file is removed), 415 (another content
    type) or 422 (no file part, a second file, an oversized field)."""
    check_length(request, limit)
    ctype = request.headers.get("content-type", "")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if ctype.startswith("multipart/form-data"):
            return await _multipart(request, ctype, dest, limit)
        if ctype.startswith(("image/", "application/octet-stream")):
            return await _raw(request, dest, limit)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    raise ApiError(415, "send the scene as multipart/form-data (a part named 'file'), as the request body "
                        "(Content-Type image/tiff), or a JSON body {\"href\": URL}")


class _Sink:
    """Buffered writes to the upload file, counted against the limit."""

    def __init__(self, dest: Path, limit: int):
        self.dest, self.limit = dest, limit
        self.file = open(dest, "wb")
        self.buffer = bytearray()
        self.size = 0

    def add(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise too_large(self.limit)
        self.buffer += data

    async def flush(self, force: bool = False) -> None:
        if self.buffer and (force or len(self.buffer) >= CHUNK):
            data, self.buffer = bytes(self.buffer), bytearray()
            await run_in_threadpool(self.file.write, data)

    async def close(self) -> None:
        await self.flush(force=True)
        await run_in_threadpool(self._sync_close)

    def _sync_close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()


async def store(data: bytes, dest: Path, limit: int, filename: str) -> Upload:
    """A scene the client sent inside its request (an OGC inline value, decoded) written to ``dest`` as an
    upload is, against the same ``limit`` (413, the partial file removed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    sink = _Sink(dest, limit)
    try:
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            sink.add(view[start:start + CHUNK])
            await sink.flush()
        await sink.close()
    except BaseException:
        sink.abort()
        dest.unlink(missing_ok=True)
        raise
    return Upload(dest, filename, sink.size)


async def _raw(request: Request, dest: Path, limit: int) -> Upload:
    sink = _Sink(dest, limit)
    try:
        async for chunk in request.stream():
            sink.add(chunk)
            await sink.flush()
        await sink.close()
    finally:
        sink.abort()
    return Upload(dest, "upload", sink.size)


async def _multipart(request: Request, ctype: str, dest: Path, limit: int) -> Upload:
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(ctype)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(422, "multipart/form-data without a boundary")
    # "filename" is the file part's and outlives it: a field part after the file (curl -F file=@a.tif
    # -F score_threshold=0.5) must not reset it
    state: dict = {"headers": {}, "name": None, "filename": None, "target": None, "hname": b"", "hvalue": b""}
    fields: dict[str, str] = {}
    sink: _Sink | None = None
    field_buf = bytearray()
    files = 0

    def on_part_begin() -> None:
        state.update(headers={}, name=None, target=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hvalue"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].lower()] = state["hvalue"]
        state["hname"], state["hvalue"] = b"", b""

    def on_headers_finished() -> None:
        nonlocal sink, files
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        state["name"] = name
        if filename is not None or name == "file":
            files += 1
            if name != "file" or files > 1:
                raise ApiError(422, "send one file, in the form part named 'file'")
            state["filename"] = filename.decode("utf-8", "replace") if filename else "upload"
            sink = _Sink(dest, limit)
            state["target"] = "file"
        else:
            field_buf.clear()
            state["target"] = "field"

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["target"] == "file":
            assert sink is not None
            sink.add(data[start:end])
        else:
            field_buf.extend(data[start:end])
            if len(field_buf) > MAX_FIELD_BYTES:
                raise ApiError(422, f"form field {state['name']!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if state["target"] == "field":
            fields[state["name"]] = field_buf.decode("utf-8", "replace")

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if sink is not None:
                await sink.flush()
        parser.finalize()
        if sink is None:
            raise ApiError(422, "no file: send the scene in a multipart/form-data part named 'file'")
        await sink.close()
    except ApiError:
        raise
    except Exception as exc:  # a malformed body
        raise ApiError(422, f"cannot read the multipart/form-data body: {exc}") from exc
    finally:
        if sink is not None:
            sink.abort()
    return Upload(dest, state["filename"] or "upload", sink.size, fields)


def check_scene(uri: str, *, bands: list[int] | None, fmt: str, max_pixels: int, label: str) -> SceneInfo:
    """Open ``uri`` the way a job will, and refuse (SceneError, one line naming ``label`` instead of the
    server's path or the href's secrets) what a job could not run: not a raster of ``SCENE_DRIVERS``, no
    usable band, bands it does not have, a size out of bounds, no CRS for GeoJSON, a file cut short."""
    path = gdal_path(uri)
    try:
        driver = _driver(path)
        info = open_scene(uri)
        DetectOptions(bands=tuple(bands) if bands else None, max_pixels=max_pixels).check(info)
        if fmt == "geojson" and info.crs is None:
            raise SceneError(f"the {driver} scene has no CRS, and GeoJSON is WGS84 longitude/latitude: ask for "
                             "format gpkg or fgb to get pixel coordinates")
        return info
    except SceneError as exc:
        raise SceneError(shown_as(str(exc), uri, label)) from exc


def _driver(path: str) -> str:
    """The driver of ``SCENE_DRIVERS`` that opens ``path``, after reading the first and the last block
    of band 1 (a file cut short fails here, not in the job); one open for both. SceneError: "not a
    raster the service reads" when no allowed driver recognises it, else GDAL's reason (a server
    without range requests, an HTTP error), for the file named as the client named it (``check_scene``)."""
    try:
        ds = open_raster(path, untrusted=True)
    except RasterioIOError as exc:
        reason = first_line(exc)
        if "not recognized as" in reason or "not recognised as" in reason:
            raise SceneError("not a raster the service reads (GeoTIFF, PNG, JPEG, JPEG 2000): not recognized as a "
                             "supported file format") from None
        reason = reason.replace(f"{path}: ", "").replace(path, "the file")
        raise SceneError(f"cannot open {path}: {reason}") from None
    with ds:
        try:
            bh, bw = ds.block_shapes[0]
            last = Window(((ds.width - 1) // bw) * bw, ((ds.height - 1) // bh) * bh, 1, 1)
            ds.read(1, window=Window(0, 0, 1, 1))
            ds.read(1, window=last)
        except RasterioIOError as exc:
            cause = exc.__cause__ or exc.__context__ or exc
            raise SceneError(f"{path} cannot be read to its end (truncated or corrupt): "
                             f"{first_line(cause)}") from exc
        return ds.driver
