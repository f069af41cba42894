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
                                                  f"in the {API_KEY_HEADER} header")
    max_upload_bytes: int = Field(4 * 2**30, gt=0)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    max_queue: int = Field(64, ge=1, description="jobs waiting to run; more get 429")
    job_timeout_s: float = Field(6 * 3600.0, gt=0, description="a job running longer fails")
    sync_max_pixels: int = Field(25_000_000, ge=0, description="largest scene a synchronous execution "
                                                               "waits for; larger ones run as jobs")
    retry_after_s: int = Field(30, ge=1, description="Retry-After of a 429")

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"
