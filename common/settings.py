"""The one settings object. Every knob is an environment variable with the prefix ``SDQ_``."""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.schemas import (
    MAX_IMAGES_PER_PROMPT,
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    SCORE_PARAMETERS,
    JobCreate,
)

MAX_PRESIGN_TTL_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot outlive 7 days

# Secrets anyone can look up: sdq's own development S3 secret (cli/services.py), MinIO's and
# common placeholders. SDQ_ENV=production refuses every secret setting that holds one.
KNOWN_DEFAULT_SECRETS = frozenset(
    {"", "sdq-dev-secret", "minioadmin", "changeme", "change-me", "secret", "password"}
)


class Settings(BaseSettings):
    """Configuration shared by the API, the workers and the CLI."""

    # Inputs stay out of error messages: a refused configuration must not print its secrets.
    model_config = SettingsConfigDict(
        env_prefix="SDQ_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # --- Redis: broker and job store -------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = Field("sdq.jobs", description="Celery queue of generation jobs (one per model)")
    batch_queue: str | None = Field(
        None, description="Celery queue of batch jobs, consumed after SDQ_QUEUE ('<queue>.batch')"
    )

    # --- S3-compatible storage --------------------------------------------------------------
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = Field(
        None, description="Host that clients reach; presigned URLs are signed for it"
    )
    s3_bucket: str = "sdq"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_create_bucket: bool = Field(False, description="Create the bucket on start (dev)")
    s3_max_attempts: int = Field(5, ge=1, description="botocore standard-mode attempts per call")
    presign_ttl_s: int = Field(3600, ge=60, le=MAX_PRESIGN_TTL_S)

    # --- model ------------------------------------------------------------------------------
    model: str = Field("tiny", description="'tiny', a Hugging Face hub id, or a local path")
    model_variant: str | None = Field(None, description="weights variant, e.g. 'fp16'")
    device: str = Field("auto", description="'auto', 'cuda', 'cuda:1', 'cpu'")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    cache_dir: Path = Path.home() / ".cache" / "sdq"
    png_compress_level: int = Field(6, ge=0, le=9)
    jpeg_quality: int = Field(90, ge=1, le=100)

    # --- job lifecycle ----------------------------------------------------------------------
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="how long job records are kept")
    job_time_limit_s: int = Field(900, ge=10, description="hard limit for one job")
    visibility_timeout_s: int = Field(3600, description="broker redelivery of unacked jobs")
    lease_ttl_s: float = Field(10.0, gt=0, description="worker lease on a running job")
    max_attempts: int = Field(3, ge=1, description="deliveries before a job fails worker_lost")
    progress_interval_s: float = Field(0.25, ge=0, description="progress write throttle")
    model_load_timeout_s: int = Field(1800, ge=10, description="time to load the pipeline")
    heartbeat_interval_s: float = Field(5.0, gt=0)
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)

    # --- reliability ------------------------------------------------------------------------
    storage_retry_s: float = Field(
        60.0, ge=0, description="how long a worker retries uploads before the job fails"
    )
    redis_retry_s: float = Field(
        60.0, ge=0, description="how long a worker retries recording a job's outcome"
    )
    shutdown_grace_s: float = Field(
        60.0, ge=0, description="on SIGTERM, time a running job gets before it is handed back"
    )
    reaper_interval_s: float = Field(
        5.0, gt=0, description="how often workers look for orphaned and overdue jobs"
    )
    fault_injection: bool = Field(
        False, description="honour the 'sdq-fault' job metadata (tests and chaos runs only)"
    )

    # --- throughput -------------------------------------------------------------------------
    max_batch: int = Field(8, ge=1, description="most images one worker generates as one batch")
    batch_window_s: float = Field(
        0.005, ge=0, description="how long a lone job waits for compatible company"
    )
    upload_threads: int = Field(2, ge=1, description="encode/upload threads per worker process")
    compile: bool = Field(False, description="torch.compile the UNet on CUDA (slow first start)")

    # --- operations -------------------------------------------------------------------------
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus port of a worker process (0: off)"
    )

    # --- API --------------------------------------------------------------------------------
    max_wait_s: float = Field(60.0, ge=0, description="cap on 'Prefer: wait=N'")
    sync_timeout_s: float = Field(
        60.0, gt=0, description="how long /score and /v1/images/generations wait for images"
    )
    score_defaults: dict[str, str | int | float] = Field(
        default_factory=dict,
        description="JSON: generation parameters /score uses where a request sets none",
    )
    max_batch_queued_total: int = Field(
        100_000, ge=1, description="queued jobs in the batch queue; a larger batch is a 429"
    )
    api_url: str = Field("http://127.0.0.1:8000", description="where the CLI reaches the API")
    log_level: str = "INFO"

    # --- security, tenancy and limits (README: "Security and multi-tenancy") ----------------
    # Production is the default so that a deployment that forgets SDQ_ENV fails closed; only
    # local tooling (`sdq up`, the tests) says SDQ_ENV=dev.
    env: Literal["dev", "production"] = Field(
        "production", description="'production' refuses auth off and well-known secrets"
    )
    auth_enabled: bool = Field(True, description="require 'Authorization: Bearer <api key>'")
    api_key: SecretStr | None = Field(None, description="API key the sdq CLI sends")
    rate_limit_per_s: float = Field(10.0, gt=0, description="requests per second per key")
    rate_limit_burst: int = Field(40, ge=1, description="requests a key may make at once")
    max_queued_per_tenant: int = Field(1000, ge=1, description="queued jobs per tenant")
    max_queued_total: int = Field(10_000, ge=1, description="queued jobs in SDQ_QUEUE")
    queue_full_retry_after_s: int = Field(10, ge=1, description="Retry-After of 'queue full'")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body cap (413)")
    max_upload_bytes: int = Field(64 << 20, ge=1024, description="body cap of /v1/batches")
    max_prompt_chars: int = Field(MAX_PROMPT_CHARS, ge=1, le=MAX_PROMPT_CHARS)
    max_prompts_per_job: int = Field(MAX_PROMPTS, ge=1, le=MAX_PROMPTS)
    max_images_per_job: int = Field(16, ge=1, le=MAX_PROMPTS * MAX_IMAGES_PER_PROMPT)
    max_pixels_per_job: int = Field(
        16 * 512 * 512, ge=64 * 64, description="width x height x images of one job"
    )
    content_policy_terms: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated words or phrases refused in prompts"
    )
    content_policy_hook: str | None = Field(
        None, description="'module:function' called with (prompts, tenant) -> reason or None"
    )
    log_format: Literal["json", "text"] = "json"
    log_prompts: bool = Field(False, description="write full prompts into the logs")

    # --- webhooks (README: "Webhooks") -------------------------------------------------------
    webhook_secret: SecretStr | None = Field(
        None,
        description="whsec_<base64> signing secret; comma-separated during a rotation, newest "
        "first (every one signs). Unset: jobs with a webhook are refused",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=300, description="a receiver must answer 2xx within this, all included"
    )
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        (0, 5, 300, 1800, 7200, 18000, 36000, 36000),
        description="comma-separated seconds before each attempt (the first is immediate)",
    )
    webhook_allow_http: bool = Field(False, description="accept http:// receivers (not only https)")
    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="comma-separated host names, IP addresses or CIDR networks that receivers "
        "may be on although they are not public (internal receivers)",
    )
    webhook_queue: str = Field("webhooks", description="Celery queue of webhook deliveries")
    webhook_concurrency: int = Field(
        16, ge=1, le=1000, description="deliveries one webhook worker process makes at once"
    )
    webhook_poll_interval_s: float = Field(
        1.0, gt=0, le=60, description="how often webhook workers look for retries that are due"
    )

    @field_validator(
        "content_policy_terms", "webhook_retry_schedule", "webhook_allowed_hosts", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(term.strip() for term in value.split(",") if term.strip())
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not 1 <= len(value) <= 50 or any(not 0 <= delay <= 7 * 24 * 3600 for delay in value):
            raise ValueError("1-50 delays, each 0-604800 seconds")
        return value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose passes ${SDQ_WEBHOOK_SECRET:-} as "": webhooks off, not a malformed secret.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_webhook_secrets(value.get_secret_value())  # raises when one is malformed
        return value

    @property
    def webhook_secrets(self) -> list[bytes]:
        """The signing keys (decoded), newest first; empty when webhooks are off."""
        if self.webhook_secret is None:
            return []
        return decode_webhook_secrets(self.webhook_secret.get_secret_value())

    @model_validator(mode="after")
    def _production_is_locked_down(self) -> Settings:
        if self.env != "production":
            return self
        problems = [] if self.auth_enabled else ["SDQ_AUTH_ENABLED is false"]
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value() in KNOWN_DEFAULT_SECRETS:
                problems.append(f"SDQ_{name.upper()} is a well-known default value")
        if problems:
            raise ValueError(
                "refusing to run with SDQ_ENV=production: "
                + "; ".join(problems)
                + " (set SDQ_ENV=dev for local development)"
            )
        return self

    @model_validator(mode="after")
    def _visibility_outlives_hard_limit(self) -> Settings:
        # A job still running when the broker's visibility timeout passes is handed to a second
        # worker; the hard time limit must end it first.
        if self.visibility_timeout_s <= self.job_time_limit_s:
            raise ValueError(
                f"SDQ_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed "
                f"SDQ_JOB_TIME_LIMIT_S ({self.job_time_limit_s})"
            )
        return self

    @field_validator("score_defaults")
    @classmethod
    def _score_parameters_only(cls, value: dict[str, str | int | float]) -> dict:
        unknown = sorted(set(value) - SCORE_PARAMETERS)
        if unknown:
            raise ValueError(f"unknown parameters {unknown}; known: {sorted(SCORE_PARAMETERS)}")
        JobCreate.model_validate({"prompt": "x", **value})  # the values are in range
        return value

    @property
    def batch_queue_name(self) -> str:
        """The batch queue: workers take from it only when SDQ_QUEUE is empty."""
        return self.batch_queue or f"{self.queue}.batch"

    @property
    def soft_time_limit_s(self) -> int:
        """Soft limit: the job gets a chance to fail cleanly before the hard kill."""
        return max(self.job_time_limit_s - 30, int(self.job_time_limit_s * 0.9))


def decode_webhook_secrets(value: str) -> list[bytes]:
    """``whsec_<base64>`` secrets, comma-separated, as HMAC keys (Standard Webhooks)."""
    keys = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        body = part.removeprefix("whsec_")
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if part == body or not 16 <= len(key) <= 64:
            # Never echo the value: it is a secret.
            raise ValueError("each webhook secret must be whsec_ + base64 of 16-64 random bytes")
        keys.append(key)
    if not keys:
        raise ValueError("no webhook secret given")
    return keys


@lru_cache
def get_settings() -> Settings:
    """Settings read once per process from the environment."""
    return Settings()
