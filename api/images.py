"""``POST /v1/images/generations``: the OpenAI Images API shape, on the same queue.

Clients written for OpenAI's API work with ``base_url`` pointed at sdq. ``model`` is accepted
and ignored (sdq serves the model its workers load); sdq's extras ``seed``,
``num_inference_steps``, ``negative_prompt`` and ``guidance_scale`` are passed through (with
openai-python: ``extra_body={...}``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from common.schemas import (
    MAX_IMAGES_PER_PROMPT,
    MAX_SEED,
    Dimension,
    JobCreate,
    OutputFormat,
    Prompt,
)

DEFAULT_SIZE = "512x512"  # SD v1.5's native size; "auto" means this too
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_DIMENSION = TypeAdapter(Dimension)


class ImageGenerate(BaseModel):
    """OpenAI's image generation request, with sdq's extras."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(description="The prompt")
    model: str | None = Field(None, max_length=256, description="Accepted and ignored")
    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_PROMPT, description="Images to generate")
    size: str = Field(DEFAULT_SIZE, description="'WxH', each 64-1024 and a multiple of 8")
    response_format: Literal["url", "b64_json"] = Field(
        "url", description="url: presigned URL in the bucket; b64_json: the image inline"
    )
    output_format: OutputFormat = Field(OutputFormat.PNG, description="Encoding (sdq extra)")
    user: str | None = Field(None, max_length=256, description="Kept in the job's metadata")
    # sdq's extras
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Image n uses seed + n")
    num_inference_steps: int = Field(50, ge=1, le=150, description="Denoising steps (sdq extra)")
    negative_prompt: Prompt | None = Field(None, description="Negative prompt (sdq extra)")
    guidance_scale: float = Field(
        7.5, ge=0, le=30, allow_inf_nan=False, description="Guidance, 0-30 (sdq extra)"
    )

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if value == "auto":
            return DEFAULT_SIZE
        match = _SIZE.match(value)
        if not match:
            raise ValueError("must read 'WxH', e.g. '512x512'")
        for name, pixels in zip(("width", "height"), match.groups(), strict=True):
            try:
                _DIMENSION.validate_python(int(pixels))
            except ValueError as exc:
                raise ValueError(f"{name} must be 64-1024 and a multiple of 8") from exc
        return value

    def job(self) -> JobCreate:
        width, height = (int(p) for p in self.size.split("x"))
        return JobCreate(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            num_images_per_prompt=self.n,
            width=width,
            height=height,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            output_format=self.output_format,
            metadata={"user": self.user} if self.user else {},
        )


class ImageData(BaseModel):
    url: str | None = Field(None, description="Presigned URL (response_format url)")
    b64_json: str | None = Field(None, description="Base64 image (response_format b64_json)")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time the images were made")
    data: list[ImageData] = Field(description="One entry per image")
    size: str = Field(description="WxH of the images (sdq extra)")
    output_format: OutputFormat = Field(description="Encoding of the images (sdq extra)")
