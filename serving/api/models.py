"""The request and response bodies of the service (pydantic): the OpenAPI document at ``/docs`` is
made from these, so they are the contract.

The job documents are OGC API - Processes - Part 1: Core ``statusInfo`` documents (field names as the
standard's ``statusInfo.yaml``: jobID, type, processID, status, message, created, started, finished,
updated, progress, links) with the service's own extra members (``windows``, ``timings``,
``detections``, ``format``, ``notes``), which the standard's schema allows.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.outputs.formats import OutputFormat

PROCESS_ID = "detect-bridges"
JobStatus = Literal["accepted", "running", "successful", "failed", "dismissed"]
MEDIA_TYPES: dict[str, str] = {
    "geojson": "application/geo+json",
    "gpkg": "application/geopackage+sqlite3",
    "fgb": "application/flatgeobuf",
    "qml": "application/xml",
}
HREF_SCHEMES = ("http", "https", "s3")


class Link(BaseModel):
    href: str
    rel: str | None = None
    type: str | None = None
    title: str | None = None
    hreflang: str | None = None


class OgcException(BaseModel):
    """An error (RFC 7807 problem details, the OGC exception shape): every 4xx and 5xx body."""

    type: str = Field(description="URI naming the kind of error")
    title: str | None = None
    status: int | None = None
    detail: str | None = Field(None, description="what went wrong, in one line")
    instance: str | None = None


class JobOptions(BaseModel):
    """What, besides the scene, shapes a job's output."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="name of the model to run; the server runs one model "
                                                "(GET / names it) and refuses another name")
    format: OutputFormat = Field("geojson", description="format the job's result is fetched in by default; "
                                                        "every format is written and can be fetched with ?f=")
    # allow_inf_nan=False: NaN compares false with both bounds, so without it "nan" would be told it
    # "should be less than or equal to 1"
    score_threshold: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                          description="drop bridges scoring below this "
                                          "(default: the operating point stored with the model, else 0)")
    bands: list[int] | None = Field(None, description="1-based bands to use as R,G,B (or one band as grey); "
                                                      "default: the first three image bands")

    gsd: float | None = Field(None, gt=0.0, allow_inf_nan=False,
                              description="the scene's ground sample distance in metres a pixel "
                                          "(default: from its CRS and transform)")
    resolution: float | Literal["native"] | None = Field(
        None, description="metres a pixel of the finest pyramid level (default: the scene resampled into "
                          "the range the model was made for; 'native': the scene's own pixels)")

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: float | str | None) -> float | str | None:
        from serving.resolution import check_resolution

        return check_resolution(v)

    aoi: str | dict[str, Any] | None = Field(
        None, description="search only this area: 'minx,miny,maxx,maxy' in degrees of WGS84 (or "
                          "'minx,miny,maxx,maxy,EPSG:NNNN' in that CRS), or a GeoJSON Polygon or MultiPolygon in "
                          "WGS84; windows that do not meet it are not run, bridges whose centre lies outside it are dropped "
                          "(default: the whole scene)",
        examples=["-123.0753,44.05,-123.0625,44.054"])

    @field_validator("aoi")
    @classmethod
    def _aoi(cls, v: str | dict | None) -> str | dict | None:
        if v == "":  # an empty form field
            return None
        if v is not None:
            from serving.engine.aoi import aoi_from_value

            aoi_from_value(v)  # AoiError is a ValueError: 422 with its message
        return v

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) not in (1, 3) or min(v) < 1):
            raise ValueError("give 1 band or 3 bands (R,G,B), numbered from 1")
        return v


def check_href(href: str) -> str:
    """``href`` if it is an http(s):// or s3:// URL with a host, else ValueError (never a local path)."""
    parts = urlsplit(href)
    if parts.scheme.lower() not in HREF_SCHEMES or not parts.netloc:
        raise ValueError(f"href must be an http://, https:// or s3:// URL, got {href[:200]!r}")
    return href


class JobHrefRequest(JobOptions):
    """A job on a scene the server reads from a URL (``POST /jobs`` with a JSON body)."""

    href: str = Field(description="http(s):// or s3:// URL of a GeoTIFF (or another raster GDAL reads)")

    @field_validator("href")
    @classmethod
    def _href(cls, v: str) -> str:
        return check_href(v)


class Quicklook(BaseModel):
    """A finished job's scene as a picture for a web map (``serving.outputs.quicklook``)."""

    bbox: list[float] = Field(description="west, south, east, north in degrees (WGS84); the PNG is in Web "
                                          "Mercator (EPSG:3857) and spans this box exactly there")
    width: int
    height: int
    href: str = Field(description="the PNG, RGBA, transparent where the scene has no data")


class WindowProgress(BaseModel):
    done: int
    total: int


class StatusInfo(BaseModel):
    """A job's status (OGC ``statusInfo``) with the service's extras."""

    jobID: str
    type: Literal["process"] = "process"
    processID: str = PROCESS_ID
    status: JobStatus
    message: str | None = Field(None, description="why a failed job failed, or what a job is doing")
    scene: str | None = Field(None, description="the scene as the client named it: the uploaded file's name, or "
                                                "the href (without user info or signing parameters)")
    created: str | None = None
    started: str | None = None
    finished: str | None = None
    updated: str | None = None
    progress: int | None = Field(None, ge=0, le=100, description="percent of the windows done")
    links: list[Link] = []
    windows: WindowProgress | None = Field(None, description="windows done of the windows planned")
    timings: dict[str, float] | None = Field(None, description="seconds: queued (waiting to run), run (and its "
                                             "parts), interrupted (runs lost when the server stopped, re-run)")
    detections: int | None = Field(None, description="bridges found (successful jobs)")
    format: OutputFormat | None = Field(None, description="the result's default format")
    notes: list[str] | None = Field(None, description="warnings about the scene")
    owner: str | None = Field(None, description="the name of the API key that submitted the job")
    expired: str | None = Field(None, description="when the job's files were deleted (the server keeps results "
                                                  "for a while only); its results are then gone (410)")


class JobList(BaseModel):
    """``GET /jobs``: a page of jobs, newest first (OGC ``jobList``)."""

    jobs: list[StatusInfo]
    links: list[Link]
    numberMatched: int | None = Field(None, description="jobs in all pages")


class LandingPage(BaseModel):
    title: str | None = None
    description: str | None = None
    links: list[Link]


class ConfClasses(BaseModel):
    conformsTo: list[str]


class ProcessSummary(BaseModel):
    id: str
    version: str
    title: str | None = None
    description: str | None = None
    keywords: list[str] | None = None
    jobControlOptions: list[Literal["sync-execute", "async-execute", "dismiss"]] | None = None
    outputTransmission: list[Literal["value", "reference"]] | None = None
    links: list[Link] | None = None


class ProcessList(BaseModel):
    processes: list[ProcessSummary]
    links: list[Link]


class InputDescription(BaseModel):
    title: str | None = None
    description: str | None = None
    minOccurs: int | None = None
    maxOccurs: int | Literal["unbounded"] | None = None
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(populate_by_name=True)


class OutputDescription(BaseModel):
    title: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(populate_by_name=True)


class Process(ProcessSummary):
    inputs: dict[str, InputDescription]
    outputs: dict[str, OutputDescription]


class Format(BaseModel):
    mediaType: str | None = None


class OutputRequest(BaseModel):
    format: Format | None = None
    transmissionMode: Literal["value", "reference"] | None = None


class Execute(BaseModel):
    """``POST /processes/detect-bridges/execution`` (OGC ``execute``). ``inputs.image`` is the scene:
    ``{"href": URL}`` (http(s) or s3), the URL as a string, or a small GeoTIFF inline ``{"value": base64,
    "mediaType": "image/tiff"}``; ``inputs.score_threshold`` and ``inputs.bands`` as for ``POST /jobs``;
    the result's format from ``outputs.bridges.format.mediaType``, its form from ``response`` (raw, the
    default, or document) and ``outputs.bridges.transmissionMode`` (``serving.api.ogc_results``)."""

    inputs: dict[str, Any]
    outputs: dict[str, OutputRequest] | None = None
    response: Literal["raw", "document"] | None = None
