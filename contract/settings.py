"""Settings of the API and the workers, read from `DDNM_*` environment variables (see the README,
section "Configuration"). One class for both processes so that the values they must agree on
(Redis URL, model name, TTLs) cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "ddnm-small-32"  # the project's own small model, shipped in the package


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DDNM_", protected_namespaces=())

    redis_url: str = "redis://127.0.0.1:6379/0"

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
