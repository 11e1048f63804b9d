"""Settings, read from ``NANOGEN_*`` environment variables (and CLI options that set them).

Built once per process by the entry point and passed down; nothing reads the environment at import.
Every field is documented in the README's settings table.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nanogen import __version__


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NANOGEN_", extra="ignore")

    # -- where things live
    home: Path = Field(default=Path(".nanogen"), description="Data directory: database, outputs, scratch.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<home>/nanogen.sqlite."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        default=None, description="Base URL clients reach nanogen at; default http://<host>:<port>."
    )
    admin_token: SecretStr | None = Field(default=None, description="Enables /admin/* when set.")

    # -- engines: which engine serves each product, and how many jobs a worker runs at once
    engine_images: str = "sandbox"
    engine_videos: str = "sandbox"
    image_concurrency: int | None = Field(default=None, ge=1, description="Default: the engine's own.")
    video_concurrency: int | None = Field(default=None, ge=1, description="Default: the engine's own.")
    image_deadline_s: float = Field(default=600.0, gt=0)
    video_deadline_s: float = Field(default=1800.0, gt=0)

    # -- sandbox engine
    sandbox_latency_s: float = Field(default=0.0, ge=0, description="Simulated provider latency per job.")
    sandbox_progress_steps: int = Field(default=5, ge=1, le=100)

    # -- limits
    rate_limit_generate: str = Field(default="100/hour", description="Per API key, both generate endpoints.")
    rate_limit_status: str = Field(
        default="3600/minute", description="Per API key, both check-status endpoints."
    )
    rate_limit_storage: str = Field(
        default="memory://", description="limits storage URI (redis://... to share)."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    # -- uploads (POST /api/uploads): local files as input images
    upload_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="Size cap of one upload.")
    upload_ttl_s: float = Field(default=86_400.0, gt=0, description="How long an upload URL stays usable.")
    rate_limit_upload: str = Field(default="300/hour", description="Per API key, uploads.")

    # -- fetching input images
    fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated hosts allowed even on private/loopback addresses (tests, intranets).",
    )
    fetch_timeout_s: float = Field(default=15.0, gt=0)
    fetch_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    fetch_max_pixels: int = Field(default=64_000_000, ge=1)
    fetch_max_redirects: int = Field(default=3, ge=0)

    # -- durable execution (DBOS)
    executor_id: str | None = Field(
        default=None, description="Stable id of this process for DBOS recovery; default <role>-<hostname>."
    )
    application_version: str = Field(default=f"nanogen-{__version__}")
    queue_polling_interval_s: float = Field(default=0.1, gt=0)
    max_executor_threads: int = Field(default=64, ge=4)
    watchdog_interval_s: float = Field(default=5.0, gt=0)

    @field_validator("fetch_allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.resolve() / 'nanogen.sqlite'}"

    @property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def outputs_dir(self) -> Path:
        return self.home.resolve() / "outputs"

    @property
    def scratch_dir(self) -> Path:
        return self.home.resolve() / "scratch"

    def executor_id_for(self, role: str) -> str:
        return self.executor_id or f"{role}-{socket.gethostname()}"
