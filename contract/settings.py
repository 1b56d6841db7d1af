"""Settings of the API and the workers, read from `DDNM_*` environment variables (see the README,
section "Configuration"). One class for both processes so that the values they must agree on
(Redis URL, model name, TTLs) cannot drift apart.
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "ddnm-small-32"  # the project's own small model, shipped in the package


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DDNM_", protected_namespaces=())

    redis_url: str = "redis://127.0.0.1:6379/0"

    # the API server (`python -m service`)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_workers: int = Field(default=1, ge=1, le=64, description="API processes on the port")
    header_timeout_s: float = Field(default=10.0, gt=0, description="for a request's headers")
    body_timeout_s: float = Field(default=30.0, gt=0, description="between two parts of a body")
    log_format: Literal["json", "text"] = "json"
    ready_without_workers: bool = Field(
        default=False,
        description="/readyz is 200 with no worker up once a model was announced (workers "
        "that scale from zero start when jobs wait)",
    )

    # access: comma-separated API keys, each the key itself or "sha256:" + its hex digest; none:
    # the API runs open, and only on a loopback address
    api_keys: str = ""
    allowed_hosts: str = Field(
        default="", description="Host headers served; empty: loopback names when open, else any"
    )
    cors_origins: str = Field(default="", description="origins allowed by CORS; empty: none")
    webhook_hosts: str = Field(default="", description="hosts webhooks may call; empty: none")
    webhook_secret: str = Field(default="", description="signs the webhooks of an open API")
    webhook_attempts: int = Field(default=5, gt=0)
    webhook_backoff_s: float = Field(default=2.0, gt=0, description="doubling after each failure")

    # admission, per API key and in all
    rate_limit_per_minute: int = Field(default=120, gt=0, description="submissions per key")
    max_active_jobs_per_key: int = Field(default=50, gt=0, description="unfinished jobs per key")
    max_queued_jobs: int = Field(default=2000, gt=0, description="unfinished jobs in all")
    max_streams_per_key: int = Field(default=100, gt=0, description="open event streams per key")
    redis_connections: int = Field(default=64, gt=1, description="API's Redis connections")
    redis_maxmemory: str = Field(default="1gb", description="of `ddnm serve`'s private Redis")

    # the model a worker serves, and the one a spec without "model" asks for
    model: str = DEFAULT_MODEL
    model_dir: Path = Path.home() / ".cache" / "ddnm" / "models"
    # a checkpoint outside the registry: file + network config (JSON) + architecture
    model_file: Path | None = None
    model_config_file: Path | None = None
    model_arch: Literal["adm", "ddpm"] = "adm"
    device: str = "auto"  # "auto": cuda when present, else cpu
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    fused_windows: int = Field(
        default=64, gt=0, description="windows per network forward of the fused tiling"
    )
    # the GPU path (ddnm.models.accelerate)
    autocast: Literal["off", "bfloat16", "float16"] = "off"
    channels_last: bool = False
    compile_mode: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    batch_buckets: str = Field(
        default="", description="comma-separated batch sizes forwards are padded up to"
    )
    worker_slots: int = Field(default=4, gt=0, description="jobs a worker process holds at once")
    batch_max_samples: int = Field(
        default=8, gt=0, description="samples per network forward across jobs; 1: no batching"
    )

    # limits on what the API admits
    max_upload_bytes: int = Field(default=20 * 2**20, gt=0)
    max_pixels: int = Field(default=4096 * 4096, gt=0)
    max_output_pixels: int = Field(default=4096 * 4096, gt=0, description="restored image")
    max_network_evaluations: int = Field(
        default=1_000_000, gt=0, description="predicted window-sized forwards of one job"
    )

    # lifetimes, seconds
    job_ttl_s: int = Field(
        default=24 * 3600, gt=0, description="records and images after a job ends"
    )
    pending_ttl_s: int = Field(
        default=7 * 24 * 3600, gt=0, description="records of unfinished jobs"
    )
    idempotency_ttl_s: int = Field(default=24 * 3600, gt=0)

    # worker timing
    job_time_limit_s: float = Field(default=3600.0, gt=0)
    visibility_timeout_s: float = Field(default=7200.0, gt=0)
    redelivery_check_s: float = Field(default=10.0, gt=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    progress_interval_s: float = Field(default=0.5, ge=0)
    preview_interval_s: float = Field(
        default=2.0, ge=0, description="least time between two previews of x0 (0: none)"
    )
    reaper_interval_s: float = Field(
        default=5.0, gt=0, description="how often the API looks for jobs of dead workers"
    )
    redispatch_s: float = Field(
        default=60.0, gt=0, description="a job queued this long with its queue empty is resent"
    )

    @property
    def loopback(self) -> bool:
        """Whether the API is bound to a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ip_address(self.host).is_loopback
        except ValueError:
            return False

    @model_validator(mode="after")
    def _visibility_outlasts_jobs(self) -> Settings:
        # an unacknowledged job is handed to another worker after the visibility timeout; it must
        # not be while the first worker may still be running it
        if self.visibility_timeout_s <= self.job_time_limit_s:
            raise ValueError(
                f"DDNM_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed "
                f"DDNM_JOB_TIME_LIMIT_S ({self.job_time_limit_s})"
            )
        if (self.model_file is None) != (self.model_config_file is None):
            raise ValueError("DDNM_MODEL_FILE and DDNM_MODEL_CONFIG_FILE go together")
        return self


def split(value: str) -> list[str]:
    """A comma-separated setting as its non-empty items."""
    return [item.strip() for item in value.split(",") if item.strip()]
