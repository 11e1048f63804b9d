"""Settings, read from ``NANOGEN_*`` environment variables (and CLI options that set them).

Built once per process by the entry point and passed down; nothing reads the environment at import.
Every field is documented in the README's settings table.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nanogen import __version__
from nanogen.db import PG_POOL_SIZE, READ_CONNECTIONS, SYSTEM_POOL_SIZE

# Bumped when a workflow's steps change (see application_version).
WORKFLOWS_REVISION = 3

# Webhook retries (docs/api.md): after 1 s, 5 s, 30 s, 2 min, 10 min, then hourly for 24 h.
DEFAULT_WEBHOOK_RETRY_SCHEDULE = (1.0, 5.0, 30.0, 120.0, 600.0, *(3600.0,) * 24)
# An admin token grants credits: one shorter than this is refused at start rather than guessed later.
ADMIN_TOKEN_MIN_LENGTH = 16


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
    admin_token: SecretStr | None = Field(
        default=None,
        description=f"Enables /admin/* when set (>= {ADMIN_TOKEN_MIN_LENGTH} characters; empty: unset).",
    )

    # -- engines: which engine serves each product, and how many jobs a worker runs at once
    engine_images: str = "sandbox"
    engine_videos: str = "sandbox"
    image_concurrency: int | None = Field(default=None, ge=1, description="Default: the engine's own.")
    video_concurrency: int | None = Field(default=None, ge=1, description="Default: the engine's own.")
    account_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="At most this many of one account's tasks run at once, per product, across workers. "
        "Default: no cap. Videos never get fewer than 21, so one request's shots run together.",
    )
    worker_engines: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated engines whose queues a worker takes; default: every configured one.",
    )
    image_deadline_s: float = Field(default=600.0, gt=0)
    video_deadline_s: float = Field(default=1800.0, gt=0)

    # -- sandbox engine
    sandbox_latency_s: float = Field(default=0.0, ge=0, description="Simulated provider latency per job.")
    sandbox_progress_steps: int = Field(default=5, ge=1, le=100)

    # -- google engine (docs/engines.md)
    google_mode: Literal["gemini", "vertex"] = Field(
        default="gemini", description="gemini: Gemini API with an API key; vertex: Vertex AI with ADC."
    )
    google_api_key: SecretStr | None = Field(default=None, description="Gemini API key (gemini mode).")
    google_project: str | None = Field(default=None, description="Google Cloud project (vertex mode).")
    google_location: str = Field(default="global", description="Vertex AI location of the image model.")
    google_video_location: str = Field(
        default="us-central1", description="Vertex AI location of the video model."
    )
    google_base_url: str | None = Field(
        default=None, description="Another endpoint for every Google call (a proxy, or a test server)."
    )
    google_image_model: str = "gemini-3.1-flash-image-preview"
    google_video_model: str | None = Field(
        default=None,
        description="Default veo-3.1-generate-preview (gemini mode) or veo-3.1-generate-001 (vertex).",
    )
    google_poll_interval_s: float = Field(default=10.0, gt=0, description="Veo operation polling.")
    google_request_timeout_s: float = Field(default=300.0, gt=0, description="One call to Google.")
    google_http_process: bool | None = Field(
        default=None,
        description="Gemini API calls made, and their image answers read, by a child process of each "
        "worker, off its interpreter lock (true), or on a thread of the worker (false). Default: a "
        "child where the worker may run on two CPUs or more.",
    )
    google_retry_base_s: float = Field(default=2.0, gt=0, description="First backoff after 429/5xx.")
    google_retry_max_s: float = Field(default=60.0, gt=0, description="Longest backoff.")
    google_video_submit_rate: str | None = Field(
        default=None,
        description="Veo submissions allowed, e.g. '10/minute' (your project's quota); over it a shot "
        "waits its turn. Shared by all workers when NANOGEN_RATE_LIMIT_STORAGE is Redis. Default: none.",
    )
    google_image_rate: str | None = Field(
        default=None,
        description="Image calls allowed, e.g. '100/minute'; over it an image waits its turn. Default: none.",
    )

    # -- diffusers engine (docs/engines.md): open-weight models on this machine's GPU
    diffusers_image_model: str = Field(
        default="black-forest-labs/FLUX.2-klein-4B",
        description="Image generate model: a hub id or a local diffusers directory (model_index.json).",
    )
    diffusers_edit_model: str | None = Field(
        default=None, description="Image edit model (several input images); default: the image model."
    )
    diffusers_device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto",
        description="auto: every CUDA GPU if there is one, else the CPU; cuda: a GPU is required.",
    )
    diffusers_cpu_offload: Literal["none", "model", "sequential"] = Field(
        default="none",
        description="Keep weights in RAM and move them to the GPU as needed (less GPU memory).",
    )
    diffusers_memory_budget_gb: float | None = Field(
        default=None,
        gt=0,
        description="Resident pipelines per device (least recently used evicted); default 90% of the device.",
    )
    diffusers_image_steps: int | None = Field(
        default=None, ge=1, le=200, description="Denoising steps per image; default: the model's own."
    )
    diffusers_native_pixels: int | None = Field(
        default=None,
        ge=4096,
        description="Pixels generated before the resize to the contract's size; default: the model's.",
    )
    diffusers_gpu_hour_usd: float | None = Field(
        default=None, ge=0, description="Cost of one GPU hour, for the local cost estimate (credits show)."
    )
    diffusers_attention_backend: str | None = Field(
        default=None,
        description="Attention backend of the transformers (diffusers' names: _native_cudnn, flash, sage, "
        "...); default: PyTorch's scaled dot-product attention.",
    )
    diffusers_compile: bool = Field(
        default=False,
        description="torch.compile the transformers' repeated blocks (the first jobs after a load compile).",
    )
    diffusers_video_model: str = Field(
        default="diffusers/LTX-2.3-Distilled-Diffusers",
        description="TEXT_2_VIDEO model: a hub id or a local diffusers directory (model_index.json).",
    )
    diffusers_flf2v_model: str | None = Field(
        default=None, description="FIRST_AND_LAST_FRAMES_2_VIDEO model; default: the video model."
    )
    diffusers_reference_video_model: str = Field(
        default="Wan-AI/Wan2.1-VACE-1.3B-diffusers",
        description="REFERENCE_2_VIDEO model (1-3 reference images): a hub id or a local directory.",
    )
    diffusers_video_steps: int | None = Field(
        default=None,
        ge=1,
        le=200,
        description="Denoising steps per shot; default: the model's (a distilled model keeps its schedule).",
    )
    diffusers_video_fps: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description="Frames per second generated, before the retime to 24 fps; default: the model's own.",
    )
    diffusers_video_native_pixels: int | None = Field(
        default=None,
        ge=256,
        description="Pixels per frame generated, before the resize to the contract's; default: the model's.",
    )

    # -- limits
    rate_limit_generate: str = Field(default="100/hour", description="Per API key, both generate endpoints.")
    rate_limit_status: str = Field(
        default="3600/minute", description="Per API key, both check-status endpoints."
    )
    rate_limit_storage: str = Field(
        default="memory://", description="limits storage URI (redis://... to share)."
    )
    rate_limit_prefix: str = Field(
        default="nanogen", min_length=1, description="First part of every rate-limit key in shared storage."
    )
    rate_limit_fail: Literal["open", "closed"] = Field(
        default="open",
        description="Shared storage unreachable: 'open' counts in process memory, 'closed' answers 503.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # -- slow clients (server/protocol.py) and the metrics endpoint
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request header must arrive within this (else 408, closed)."
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="An incomplete request body must progress at least this often."
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="Bearer token of GET /metrics; unset or blank: /metrics answers 404."
    )
    # -- logs (nanogen/logs.py)
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: human-readable lines; json: one JSON object per line."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="info logs a line per request and per task transition."
    )

    # -- output storage (docs/storage.md)
    storage: Literal["local", "s3"] = Field(default="local", description="Where outputs and inputs live.")
    s3_bucket: str | None = Field(default=None, description="Bucket name; required with storage=s3.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, R2, ...); default AWS for the region."
    )
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = Field(default=None, description="Default: boto3's credential chain.")
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_urls: Literal["proxy", "presigned", "public"] = Field(
        default="proxy",
        description="Output URLs: nanogen streams from the bucket, redirects to presigned URLs, or the "
        "bucket's own public URL (s3_public_url).",
    )
    s3_public_url: str | None = Field(default=None, description="Public base URL of the bucket (or CDN).")
    s3_presign_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    # -- retention of outputs and inputs
    retention_days: float | None = Field(
        default=None, gt=0, description="Delete a generation's files this long after it ended; unset: keep."
    )
    retention_sweep_interval_s: float = Field(default=3600.0, gt=0)

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

    # -- webhooks (nanogen/webhooks; docs/api.md "Webhooks")
    webhook_master_key: SecretStr | None = Field(
        default=None,
        description="The key every account's signing secret derives from; default: <home>/webhook-master-key "
        "(made on first use, mode 0600). Every process of a deployment needs the same one.",
    )
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_SCHEDULE),
        description="Seconds before each retry of a failed delivery, comma-separated; NxK repeats N K times.",
    )
    webhook_timeout_s: float = Field(
        default=15.0, gt=0, description="A receiver that has not answered within this has failed the attempt."
    )
    webhook_queue_polling_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="How often a worker polls the webhook delivery queue (each poll costs a few ms of CPU).",
    )
    webhook_concurrency: int = Field(
        default=1000, ge=1, description="Deliveries one worker has under way at once (waiting retries count)."
    )

    # -- durable execution (DBOS)
    executor_id: str | None = Field(
        default=None, description="Stable id of this process for DBOS recovery; default <role>-<hostname>."
    )
    # DBOS replays a recovered workflow's recorded steps by position, so a release whose workflows
    # take other steps gets another version (WORKFLOWS_REVISION): processes of the old one finish
    # the old workflows (docs/deploy.md, "Upgrading").
    application_version: str = Field(default=f"nanogen-{__version__}-w{WORKFLOWS_REVISION}")
    # Every poll costs a few queries (and GIL time in an API process) whether or not work waits:
    # images are polled often (a sandbox or hosted image takes seconds), video shots, which take
    # minutes on a real engine, less.
    image_queue_polling_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="How often a worker polls its image queue. Default: the engine's own (sandbox 0.05 s, "
        "google 0.1 s, diffusers 0.5 s).",
    )
    video_queue_polling_interval_s: float | None = Field(
        default=None, gt=0, description="How often a worker polls its video queue. Default: 0.5 s."
    )
    media_queue_polling_interval_s: float = Field(
        default=0.5, gt=0, description="How often a worker polls the concatenation queue."
    )
    # The intervals above are the spacing of polls while there is work; a process's pollers are woken
    # by what it enqueues itself, by its own workflows' ends and, on PostgreSQL, by what other
    # processes enqueue, and otherwise wait this long (tasks/wakeups.py, tasks/pg_wakeups.py).
    queue_idle_polling_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How long a worker's queue pollers wait, when nothing woke them, before they look for "
        "work anyway. What this process enqueues wakes them at once, and on PostgreSQL so does what any "
        "process enqueues (LISTEN/NOTIFY).",
    )
    max_executor_threads: int | None = Field(
        default=None,
        ge=4,
        description="Bound on DBOS's worker threads. Default: what this process's queues can run at once, "
        "plus a few (a waiting job holds one blocked thread).",
    )
    watchdog_interval_s: float = Field(default=5.0, gt=0)
    # -- live progress (server/watch.py): event streams and check-status with Prefer: wait
    watch_interval_s: float = Field(
        default=0.25,
        gt=0,
        le=10,
        description="How often one read checks every generation an event stream or a waiting "
        "check-status follows (whatever their number).",
    )
    shutdown_grace_s: int = Field(
        default=5, ge=0, description="On SIGTERM, how long running generations get to finish."
    )

    # -- PostgreSQL connections a process holds at most (docs/deploy.md); SQLite: not used
    db_pool_size: int = Field(
        default=PG_POOL_SIZE, ge=1, description="nanogen's tables: submit writer, workflow steps, sweepers."
    )
    db_read_connections: int = Field(
        default=READ_CONNECTIONS, ge=1, description="The API's reads on the event loop (serve, api)."
    )
    db_system_pool_size: int = Field(
        default=SYSTEM_POOL_SIZE, ge=2, description="DBOS's system tables: queue polling, workflow records."
    )

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _retry_schedule(cls, value: object) -> object:
        """``1,5,30,120,600,3600x24``: seconds before each retry; ``NxK`` is N repeated K times."""
        if not isinstance(value, str):
            return value
        delays: list[float] = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            seconds, _, times = part.partition("x")
            delays += [float(seconds)] * (int(times) if times else 1)
        if any(d < 0 or d != d for d in delays):
            raise ValueError("delays must be seconds >= 0")
        return delays

    @field_validator("admin_token", mode="before")
    @classmethod
    def _admin_token(cls, value: object) -> object:
        """Empty or blank counts as unset (compose files write ``${VAR}`` for an unset variable);
        a short one is an error, so that ``serve`` refuses to start instead of guarding with it."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str):
            if not raw.strip():
                return None
            if len(raw.strip()) < ADMIN_TOKEN_MIN_LENGTH:
                raise ValueError(
                    f"must be at least {ADMIN_TOKEN_MIN_LENGTH} characters "
                    "(e.g. `openssl rand -hex 32`), or unset to turn the admin API off"
                )
            return raw.strip()
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("fetch_allow_hosts", "worker_engines", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("NANOGEN_S3_BUCKET is required with NANOGEN_STORAGE=s3")
        if self.s3_urls == "public" and not self.s3_public_url:
            raise ValueError("NANOGEN_S3_PUBLIC_URL is required with NANOGEN_S3_URLS=public")
        return self

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
