"""Service configuration: one pydantic-settings model read from ``NIFF_*`` environment variables.

The command line (``niff-serve``) builds its options from these fields, so the field descriptions are
also the ``--help`` text.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from niff_contract import ImageLimits

ENV_PREFIX = "NIFF_"

Backend = Literal["auto", "onnxruntime", "torchscript"]
Device = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
Topology = Literal["auto", "split", "replicated"]


class Settings(BaseSettings):
    """Everything ``niff-serve`` can be told; validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False, extra="forbid")

    model_repository: Path = Field(description="Folder with one sub-folder per model (see docs/model-repository.md).")
    backend: Backend = Field("auto", description="Runtime: auto picks ONNX Runtime unless only TorchScript fits.")
    predictor: str | None = Field(
        None,
        pattern=r"^(grpc://[^/\s,]+:[0-9]{1,5}|unix:/[^\s,]+)(,(grpc://[^/\s,]+:[0-9]{1,5}|unix:/[^\s,]+))*$",
        description="grpc://HOST:PORT of a KServe v2 predictor (another niff-serve, or Triton serving the same "
        "folders' model.onnx) that runs the models: this server then only decodes, preprocesses and answers "
        "(a transformer), and loads no runtime. Several, comma-separated, share the batches. unix:PATH is the "
        "split topology's own inference process.",
    )
    device: Device = Field("auto", description="auto uses a GPU when the chosen runtime can reach one.")
    max_batch_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Most images merged into one inference, for every model (default: each model's config.pbtxt).",
    )
    max_batch_delay_ms: float | None = Field(
        None,
        ge=0,
        le=60_000,
        description="Longest wait for more requests once the first is queued (default: each model's config.pbtxt).",
    )
    max_queue_size: int = Field(
        256, ge=1, description="Most images admitted per model and not yet in a batch; beyond it requests get 503."
    )
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="Deadline for one request; past it: 504.")
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Largest request body accepted (413 above).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded image (width × height) accepted; guards decompression bombs."
    )
    max_image_aspect_ratio: float = Field(
        20.0,
        ge=1,
        le=10_000,
        description="Longest side over shortest side accepted (422 above); bounds the resize before the center crop.",
    )
    max_image_pixels_per_byte: float = Field(
        128.0,
        ge=1,
        le=1_000_000,
        description="Beyond 4,194,304 pixels per request, pixels declared per byte of images sent (413 above); "
        "photos have 3 to 30, a 38-byte WebP can declare 40 million.",
    )
    max_json_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1,
        description="Largest v2 request sent as plain JSON (413 above); binary tensors have only the upload limit.",
    )
    max_body_memory_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Request bodies held in memory at once, all requests together; beyond it: 503 with Retry-After.",
    )
    keep_alive_timeout_s: float = Field(
        75.0,
        gt=0,
        le=3600,
        description="Idle time before the server closes a keep-alive connection; keep it above your load balancer's.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Time a client has to send a request's headers (new connections included)."
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest request line plus headers (431 above)."
    )
    max_connections: int = Field(
        4096, ge=1, description="Open client connections at once; beyond it new ones get 503 and are closed."
    )
    api_key: SecretStr | None = Field(
        None, description="When set, model endpoints need 'Authorization: Bearer <key>'. Prefer the env variable."
    )
    host: str = Field("127.0.0.1", min_length=1, description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to bind.")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="TCP port of the KServe v2 gRPC endpoint, on the same host; 0 turns it off."
    )
    log_level: LogLevel = Field("info", description="Lowest level written to the JSON log.")
    ui: bool = Field(True, description="Serve the browser page at / (models, their cards, classify an image).")
    preprocess_workers: int = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1),
        ge=1,
        le=256,
        description="Threads decoding and resizing images (default: CPU count, at most 4).",
    )
    backend_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU threads per inference (0: the runtime's default, or the CPUs divided among the workers).",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Server processes sharing the port (default: one per available CPU, up to 4; replicated on a "
        "GPU: one; split: up to 8).",
    )
    inference_processes: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Split topology: inference processes, each holding every model, the front ends sharing their "
        "batches among them (default: one per visible GPU; one on a CPU host).",
    )
    topology: Topology = Field(
        "auto",
        description="split: the workers are front ends (HTTP, gRPC, decoding) feeding one inference process that "
        "holds the models and forms every batch; replicated: each worker is a whole server with its own models "
        "and batches. auto: split when a model runs on a GPU, else replicated.",
    )
    startup_timeout_s: float = Field(
        900.0,
        gt=0,
        le=86400,
        description="With several workers: a worker that does not serve this long after it started (its models "
        "still loading or warming up, or stuck) is killed and the server exits.",
    )
    liveness_timeout_s: float = Field(
        3.0,
        ge=0.5,
        le=600,
        description="With several workers: a worker silent this long (stopped, hung) is killed and the server "
        "exits; workers that hear nothing from the supervisor this long report not ready.",
    )
    shutdown_delay_s: float = Field(
        0.0, ge=0, le=600, description="After SIGTERM, keep serving this long while reporting not-ready, then drain."
    )

    @field_validator("log_level", "backend", "device", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> Settings:
        if self.max_batch_size is not None and self.max_queue_size < self.max_batch_size:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be at least max_batch_size ({self.max_batch_size})"
            )
        if self.grpc_port == self.port:
            raise ValueError(f"grpc_port and port must differ (both are {self.port})")
        if self.topology == "split" and self.predictor is not None and not self.predictor.startswith("unix:"):
            raise ValueError("topology split runs the models here; a remote predictor runs them elsewhere: choose one")
        if self.max_body_memory_bytes < self.max_upload_bytes:
            raise ValueError(
                f"max_body_memory_bytes ({self.max_body_memory_bytes}) must be at least "
                f"max_upload_bytes ({self.max_upload_bytes})"
            )
        return self

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_pixels, self.max_image_aspect_ratio, self.max_image_pixels_per_byte)


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def unknown_env_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """``NIFF_*`` variables that match no setting: most likely typos worth a warning."""
    known = {env_name(name) for name in Settings.model_fields}
    return sorted(k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def warn_about_unknown_env(log: logging.Logger) -> None:
    """One warning per :func:`unknown_env_names` name, from the process that read the environment."""
    for name in unknown_env_names():
        log.warning("ignoring unknown setting %s", name)
