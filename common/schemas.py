"""Request and response schemas shared by the API and the workers (pydantic v2)."""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

MAX_PROMPTS = 16
MAX_IMAGES_PER_PROMPT = 8
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
MAX_METADATA_ITEMS = 16

# What a /score request may set besides the prompt, as extra columns or in "parameters" (its
# answer is one PNG per prompt, so no image count or format).
SCORE_PARAMETERS = frozenset(
    {
        "negative_prompt",
        "num_inference_steps",
        "guidance_scale",
        "width",
        "height",
        "seed",
        "scheduler",
    }
)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}
)


class Scheduler(StrEnum):
    """Sampler names; each maps to a diffusers scheduler built from the model's config."""

    PNDM = "pndm"
    DDIM = "ddim"
    EULER = "euler"
    EULER_A = "euler_a"
    DPMPP_2M = "dpmpp_2m"
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    HEUN = "heun"
    UNIPC = "unipc"


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


Prompt = Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS), AfterValidator(_not_blank)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


def _multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError("must be a multiple of 8")
    return value


Dimension = Annotated[int, Field(ge=64, le=1024), AfterValidator(_multiple_of_8)]

MAX_WEBHOOK_URL_CHARS = 2048


class WebhookEvent(StrEnum):
    """What a webhook may be told. ``job.progress`` comes at most once a second per job."""

    JOB_STARTED = "job.started"
    JOB_PROGRESS = "job.progress"
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELED = "job.canceled"
    JOB_EXPIRED = "job.expired"
    BATCH_COMPLETED = "batch.completed"


JOB_TERMINAL_EVENTS = (
    WebhookEvent.JOB_SUCCEEDED,
    WebhookEvent.JOB_FAILED,
    WebhookEvent.JOB_CANCELED,
    WebhookEvent.JOB_EXPIRED,
)
JOB_EVENTS = frozenset({WebhookEvent.JOB_STARTED, WebhookEvent.JOB_PROGRESS, *JOB_TERMINAL_EVENTS})


class WebhookSpec(BaseModel):
    """Where to POST a job's (or a batch's) events, and which ones. Without ``events``: the
    terminal ones of a job (succeeded, failed, canceled, expired), or a batch's completion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, StringConstraints(min_length=1, max_length=MAX_WEBHOOK_URL_CHARS)] = Field(
        description="https URL of the receiver (checked at submit: public addresses only)"
    )
    events: list[WebhookEvent] | None = Field(
        None, min_length=1, max_length=len(WebhookEvent), description="Events to send"
    )

    @field_validator("events")
    @classmethod
    def _distinct(cls, events: list[WebhookEvent] | None) -> list[WebhookEvent] | None:
        return None if events is None else sorted(set(events), key=list(WebhookEvent).index)

    def for_job(self) -> WebhookSpec:
        """Checked for a job: job events only, the terminal ones by default."""
        events = self.events or list(JOB_TERMINAL_EVENTS)
        wrong = [e.value for e in events if e not in JOB_EVENTS]
        if wrong:
            raise ValueError(f"a job's webhook cannot subscribe to {wrong}")
        return self.model_copy(update={"events": events})

    def for_batch(self) -> WebhookSpec:
        """Checked for a batch: only batch.completed, which is also the default."""
        events = self.events or [WebhookEvent.BATCH_COMPLETED]
        if events != [WebhookEvent.BATCH_COMPLETED]:
            raise ValueError("a batch's webhook can only subscribe to ['batch.completed']")
        return self.model_copy(update={"events": events})


class JobCreate(BaseModel):
    """A text-to-image request, as clients send it to ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        description=f"One prompt, or a list of 1-{MAX_PROMPTS} prompts"
    )
    negative_prompt: Prompt | list[Prompt] | None = Field(
        None, description="One negative prompt for all prompts, or one per prompt"
    )
    num_images_per_prompt: int = Field(
        1, ge=1, le=MAX_IMAGES_PER_PROMPT, description="Images per prompt, 1-8"
    )
    width: Dimension = Field(512, description="Pixels, 64-1024, a multiple of 8")
    height: Dimension = Field(512, description="Pixels, 64-1024, a multiple of 8")
    num_inference_steps: int = Field(50, ge=1, le=150, description="Denoising steps, 1-150")
    guidance_scale: float = Field(
        7.5,
        ge=0,
        le=30,
        allow_inf_nan=False,
        description="Classifier-free guidance, 0-30; 1 or less turns it off",
    )
    scheduler: Scheduler = Field(Scheduler.PNDM, description="Sampler (SD v1.5's own is pndm)")
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Base seed; image n uses seed + n. Chosen and returned when absent.",
    )
    output_format: OutputFormat = Field(OutputFormat.PNG, description="Encoding of the images")
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_ITEMS,
        description="Small string map echoed back with the job",
    )
    expires_at: AwareDatetime | None = Field(
        None,
        description="Deadline to start by (RFC 3339 with a time zone); still queued then, "
        "the job ends 'expired'. The Cancel-After header sets one too.",
    )
    webhook: WebhookSpec | None = Field(
        None, description="Signed POSTs of the job's events (Standard Webhooks)"
    )

    @field_validator("webhook")
    @classmethod
    def _job_webhook(cls, webhook: WebhookSpec | None) -> WebhookSpec | None:
        return webhook.for_job() if webhook is not None else None

    @field_validator("negative_prompt")
    @classmethod
    def _one_negative_per_prompt(cls, negative: object, info: ValidationInfo) -> object:
        prompt = info.data.get("prompt")
        if isinstance(negative, list) and isinstance(prompt, list) and len(negative) != len(prompt):
            raise ValueError(f"a list needs one entry per prompt ({len(prompt)})")
        if isinstance(negative, list) and isinstance(prompt, str) and len(negative) != 1:
            raise ValueError("a list needs one entry per prompt (1)")
        return negative

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def normalised(self) -> JobRequest:
        """The request as the worker runs it: lists everywhere and a seed chosen if absent."""
        negative = self.negative_prompt
        if isinstance(negative, str):
            negative = [negative] * len(self.prompts)
        return JobRequest(
            **self.model_dump(
                exclude={"prompt", "negative_prompt", "seed", "expires_at", "webhook"}
            ),
            prompt=self.prompts,
            negative_prompt=negative,
            seed=self.seed if self.seed is not None else secrets.randbelow(MAX_SEED + 1),
        )


class JobRequest(BaseModel):
    """The normalised request stored with a job: what the worker runs, seed included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: list[str] = Field(description="The prompts, always a list")
    negative_prompt: list[str] | None = Field(None, description="One per prompt, if any")
    num_images_per_prompt: int = Field(description="Images per prompt")
    width: int = Field(description="Pixels")
    height: int = Field(description="Pixels")
    num_inference_steps: int = Field(description="Denoising steps")
    guidance_scale: float = Field(description="Classifier-free guidance scale")
    scheduler: Scheduler = Field(description="Sampler")
    seed: int = Field(description="Base seed used (chosen if the request had none)")
    output_format: OutputFormat = Field(description="Encoding of the images")
    metadata: dict[str, str] = Field(default_factory=dict, description="As submitted")

    @property
    def num_images(self) -> int:
        return len(self.prompt) * self.num_images_per_prompt

    def image_seed(self, index: int) -> int:
        """Seed of image ``index``: re-running its prompt alone with this seed reproduces it."""
        return (self.seed + index) % (MAX_SEED + 1)

    def prompt_index(self, index: int) -> int:
        return index // self.num_images_per_prompt


class Progress(BaseModel):
    step: int = Field(0, description="Denoising steps done")
    total_steps: int = Field(description="Denoising steps the job runs")
    fraction: float = Field(description="step / total_steps, 0.0-1.0")


class ImageResult(BaseModel):
    key: str = Field(description="Object key in the bucket")
    url: str | None = Field(None, description="Presigned GET URL")
    expires_at: datetime | None = Field(None, description="When the presigned URL stops working")
    width: int = Field(description="Pixels")
    height: int = Field(description="Pixels")
    seed: int = Field(description="Seed that reproduces this image alone")
    prompt_index: int = Field(description="Index of its prompt in request.prompt")
    content_type: str = Field(description="MIME type of the stored object")
    nsfw_content_detected: bool = Field(
        description="True when the safety checker flagged it; the stored image is then black"
    )


class JobResult(BaseModel):
    images: list[ImageResult] = Field(
        description="One per image: all images of prompt 0, then of prompt 1, ..."
    )
    nsfw_content_detected: list[bool] = Field(description="Per image, in the same order")
    manifest_key: str = Field(description="Key of result.json beside the images")


class JobError(BaseModel):
    code: str = Field(
        description="Stable code: worker_lost, storage_unavailable, timeout, expired, "
        "generation_failed"
    )
    message: str = Field(description="What happened, for people")


class Timings(BaseModel):
    """Seconds, as measured by the worker."""

    queue_s: float | None = Field(None, description="Submitted to started")
    inference_s: float | None = Field(None, description="Generation, safety checker included")
    upload_s: float | None = Field(None, description="Encoding and storing the objects")
    total_s: float | None = Field(None, description="Submitted to finished")


class JobPublic(BaseModel):
    """A job as clients see it."""

    id: str = Field(description="128 random bits, hex")
    status: JobStatus = Field(description="queued, running, then succeeded/failed/canceled/expired")
    created_at: datetime = Field(description="When it was submitted")
    started_at: datetime | None = Field(None, description="When it first started running")
    finished_at: datetime | None = Field(None, description="When it reached its final status")
    progress: Progress = Field(description="Denoising progress of the running attempt")
    queue_position: int | None = Field(
        None, description="Jobs ahead of this one in its queue while queued (0 = next)"
    )
    request: JobRequest = Field(description="The normalised request, with the seed used")
    metadata: dict[str, str] = Field(default_factory=dict, description="Echo of request metadata")
    expires_at: datetime | None = Field(None, description="Deadline to start by, if any")
    batch_id: str | None = Field(None, description="The batch this job is a row of, if any")
    webhook: WebhookSpec | None = Field(None, description="Where its events are sent, if anywhere")
    result: JobResult | None = Field(None, description="Images and safety flags, once succeeded")
    error: JobError | None = Field(None, description="Why it failed or expired")
    attempts: int = Field(0, description="Deliveries that started running it")
    worker: str | None = Field(None, description="Worker that ran (or runs) the job")
    timings: Timings = Field(default_factory=Timings, description="Seconds, measured by the worker")
    links: dict[str, str] = Field(
        default_factory=dict, description="Related paths: self, cancel, ..."
    )


class JobList(BaseModel):
    jobs: list[JobPublic] = Field(description="Newest first")
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page")


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. validation_error")
    message: str = Field(description="What is wrong, naming the field where there is one")
    details: object | None = Field(None, description="Per-field details or limits, if any")


class ErrorResponse(BaseModel):
    error: ErrorBody = Field(description="Every error has this shape")


class WorkerPublic(BaseModel):
    name: str = Field(description="Celery node name and process id")
    queue: str = Field(description="Queue it serves")
    model: str = Field(description="SDQ_MODEL it loaded")
    device: str = Field(description="cuda, cuda:N or cpu")
    state: Literal["loading", "idle", "busy"] = Field(description="What it is doing now")
    current_job: str | None = Field(None, description="The job it is generating, if any")
    jobs_done: int = Field(0, description="Jobs it finished since it started")
    pipeline_loads: int = Field(0, description="Times it loaded the pipeline (1 when healthy)")
    last_beat: datetime = Field(description="Its last heartbeat")
    started_at: datetime | None = Field(None, description="When the process started")
    gpu_name: str | None = Field(None, description="GPU model, on CUDA")
    gpu_memory_total_mb: int | None = Field(None, description="GPU memory, on CUDA")


class WorkerList(BaseModel):
    workers: list[WorkerPublic] = Field(description="Workers with a live heartbeat")


class ComponentHealth(BaseModel):
    ok: bool = Field(description="Reachable")
    error: str | None = Field(None, description="Exception type when not")


class Readiness(BaseModel):
    ready: bool = Field(description="Every check passed")
    checks: dict[str, ComponentHealth] = Field(description="redis and storage")
