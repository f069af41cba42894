"""The service's settings: ``hbdnet serve`` options, one object handed to the app."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from serving.engine.scene import DEFAULT_MAX_PIXELS

API_KEY_ENV = "HBDNET_API_KEY"
API_KEY_HEADER = "X-API-Key"


class Settings(BaseModel):
    data_dir: Path = Field(description="job database, uploads and results")
    model: str | None = Field(None, description="NAME of a bundled model or PATH to an hbdnet checkpoint")
    device: str = "auto"
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the model's convolutions and matrix products: auto is bfloat16 on a GPU that has it")
    runtime: Literal["auto", "torch", "onnx", "int8"] = Field(
        "auto", description="what runs the convolutional trunk (hbdnet detect --help): auto is the model "
                            "file's int8 trunk on a CPU when it has one, else torch")
    workers: int | None = Field(None, description="0: the model in the server process; N: N Ray workers; "
                                                  "None: one per GPU, or one CPU worker with every core")
    read_threads: int | None = None
    ray_address: str | None = None
    api_key: str | None = Field(None, description="when set, every route but /healthz and /readyz needs it "
                                                  f"in the {API_KEY_HEADER} header (an admin key)")
    keys_file: Path | None = Field(None, description="API keys, one 'NAME KEY [admin]' a line (serving.api.keys): "
                                                     "each key sees only its own jobs, an admin key all")
    cors_origins: list[str] = Field([], description="web origins allowed to call the API from a browser (CORS); "
                                                    "none by default")
    basemap: str | None = Field(None, description="tile URL template ({z}/{x}/{y}) under the web page's map; "
                                                   "None: no basemap (the page loads nothing from elsewhere)")
    basemap_attribution: str | None = Field(None, description="the basemap's attribution, shown on the map")
    keep_results_s: float | None = Field(None, gt=0, description="finished jobs' files are deleted this long "
                                                                 "after they finish (records kept); None: forever")
    max_data_bytes: int | None = Field(None, gt=0, description="size of the data folder past which "
                                                               "submissions are refused (507)")
    max_upload_bytes: int = Field(4 * 2**30, gt=0)
    max_inline_bytes: int = Field(16 * 2**20, gt=0, description="largest scene sent inline (base64 in an OGC "
                                                                "execute request, held in memory): bytes decoded")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    store: str | None = Field(None, description="postgresql://... : a job store that several replicas share "
                                                "(their --data-dir a folder they all reach); None: SQLite in "
                                                "the data folder, for one server process")
    heartbeat_s: float = Field(2.0, gt=0, description="how often a replica says it still runs its job")
    takeover_s: float = Field(30.0, gt=0, description="a running job whose replica has not said so for this "
                                                      "long is run again by another (shared store)")
    max_queue: int = Field(64, ge=1, description="jobs waiting to run; more get 429")
    job_timeout_s: float = Field(6 * 3600.0, gt=0, description="a job running longer fails")
    # A job's cost, known before it is accepted (serving.api.job_cost). Defaults for a CPU server: one
    # CPU worker runs about a window a second, so 2,000 windows (a 30,000 px square scene at 1024 px
    # windows; 16,384 px is 535) is half an hour, and an hour's estimate is the longest job accepted.
    max_windows: int | None = Field(2000, ge=1, description="a scene whose pyramid has more windows is refused "
                                                             "(422); None: no limit")
    max_job_seconds: float | None = Field(3600.0, gt=0, description="a job estimated to run longer is refused "
                                                                    "(422); None: no limit")
    seconds_per_window: float = Field(1.0, gt=0, description="the estimate's seconds per window until this "
                                                             "server has measured its own on a finished job")
    sync_max_pixels: int = Field(25_000_000, ge=0, description="largest scene a synchronous execution "
                                                               "waits for; larger ones run as jobs")
    retry_after_s: int = Field(30, ge=1, description="Retry-After of a 429")
    # Scenes read from an href (serving.api.href_policy, serving.engine.scene.HttpLimits)
    allow_private_hrefs: bool = Field(False, description="fetch hrefs whose host is loopback, private or "
                                                         "link-local too (off: refused before any request)")
    allow_href_hosts: list[str] = Field([], description="hosts fetched although not public (by name or address)")
    http_timeout_s: int = Field(60, ge=1, description="seconds one HTTP request of GDAL's may take "
                                                      "(connecting: at most 10)")
    max_checking: int = Field(8, ge=1, description="submissions whose scene is being opened at once; more "
                                                   "get 429")

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"
