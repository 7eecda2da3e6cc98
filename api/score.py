"""``POST /score``: the seed's real-time interface, on the same queue as ``/v1/jobs``.

Input (pandas "split" orientation, as the seed's sample)::

    {"input_data": {"columns": ["prompt"], "data": ["a cat", "a dog"], "index": [0, 1]}}

With one column a row may be the bare prompt; with more, each row is a list with one value per
column. Besides ``prompt``, the columns (and a ``parameters`` object, inside ``input_data`` or
beside it) may set the generation parameters in :data:`common.schemas.SCORE_PARAMETERS`;
``SDQ_SCORE_DEFAULTS`` fills what a request leaves out. ``index`` is accepted and ignored: the
answer is in row order. Output: ``[{"generated_image": [<base64 PNG>, ...],
"nsfw_content_detected": ["True"|"False", ...]}]``, one entry per row.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import ApiError, describe_validation
from common import keys
from common.schemas import MAX_SEED, SCORE_PARAMETERS, JobCreate
from common.settings import Settings


class ScoreInputData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: list[str] = Field(min_length=1, description="Must include 'prompt'")
    data: list[Any] = Field(description="Rows: a prompt, or a list with a value per column")
    index: list[Any] | None = Field(None, description="Accepted and ignored")
    parameters: dict[str, Any] | None = Field(None, description="Parameters for every row")


class ScoreRequest(BaseModel):
    """The seed's real-time input."""

    model_config = ConfigDict(extra="forbid")

    input_data: ScoreInputData = Field(description="columns, data rows and index, as the seed")
    parameters: dict[str, Any] | None = Field(None, description="Parameters for every row")


class ScoreOutput(BaseModel):
    generated_image: list[str] = Field(description="Base64 PNG images, one per row, in order")
    nsfw_content_detected: list[str] = Field(description='"True" or "False" per image')


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "validation_error",
        f"{field}: {message}",
        details=[{"field": field, "message": message, "type": "value_error"}],
    )


def _checked(fields: dict[str, Any], where: str) -> JobCreate:
    """A job body from one row's fields, or a 422 naming the row and the field."""
    try:
        return JobCreate.model_validate(fields)
    except ValidationError as exc:
        _, details = describe_validation(list(exc.errors()))
        for detail in details:
            detail["field"] = f"{where}.{detail['field']}"
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        raise ApiError(422, "validation_error", message, details=details) from exc


def shared_parameters(request: ScoreRequest, settings: Settings) -> dict[str, Any]:
    """Defaults, then ``input_data.parameters``, then top-level ``parameters``; checked."""
    merged = dict(settings.score_defaults)
    for where, given in (
        ("input_data.parameters", request.input_data.parameters),
        ("parameters", request.parameters),
    ):
        unknown = sorted(set(given or {}) - SCORE_PARAMETERS)
        if unknown:
            raise _invalid(
                where, f"unknown parameters {unknown}; known: {sorted(SCORE_PARAMETERS)}"
            )
        merged.update({k: v for k, v in (given or {}).items() if v is not None})
    _checked({"prompt": "-", **merged}, "parameters")
    return merged


def rows_of(data: ScoreInputData) -> list[dict[str, Any]]:
    """Each row as {column: value}; 4xx naming what is wrong with the shape."""
    columns = data.columns
    if "prompt" not in columns:
        raise _invalid("input_data.columns", f"needs a 'prompt' column; got {columns}")
    if len(set(columns)) != len(columns):
        raise _invalid("input_data.columns", f"a column is named twice: {columns}")
    unknown = sorted(set(columns) - SCORE_PARAMETERS - {"prompt"})
    if unknown:
        raise _invalid(
            "input_data.columns",
            f"unknown columns {unknown}; known: {sorted(SCORE_PARAMETERS | {'prompt'})}",
        )
    if not data.data:
        raise _invalid("input_data.data", "no rows; send at least one prompt")
    if len(data.data) > keys.SCORE_MAX_ROWS:
        raise ApiError(
            413,
            "too_many_rows",
            f"/score takes at most {keys.SCORE_MAX_ROWS} rows; use /v1/batches for more",
            details={"limit": keys.SCORE_MAX_ROWS},
        )
    rows = []
    for n, row in enumerate(data.data):
        if not isinstance(row, list) and len(columns) == 1:
            row = [row]
        if not isinstance(row, list) or len(row) != len(columns):
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise _invalid(
                f"input_data.data[{n}]",
                f"a row needs one value per column ({len(columns)}: {columns}); got {got}",
            )
        rows.append({c: v for c, v in zip(columns, row, strict=True) if v is not None})
    return rows


def job_bodies(request: ScoreRequest, settings: Settings) -> list[JobCreate]:
    """The jobs of a request: runs of neighbouring rows with the same parameters share a job
    (the GPU generates them together), up to the per-job caps. Row n of a shared ``seed``
    gets seed + n; a ``seed`` column gives each row its own job and exactly that seed."""
    shared = shared_parameters(request, settings)
    rows = rows_of(request.input_data)
    for n, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str):
            raise _invalid(f"input_data.data[{n}].prompt", "must be a string")
        _checked({**shared, **row}, f"input_data.data[{n}]")
    per_row_seed = "seed" in request.input_data.columns
    bodies: list[JobCreate] = []
    start = 0
    while start < len(rows):
        params = _params(shared, rows[start])
        cap = 1 if per_row_seed else _prompts_per_job(params, settings)
        end = start + 1
        while end < len(rows) and end - start < cap and _params(shared, rows[end]) == params:
            end += 1
        if "seed" in params and not per_row_seed:
            params["seed"] = (params["seed"] + start) % (MAX_SEED + 1)
        bodies.append(JobCreate(prompt=[r["prompt"] for r in rows[start:end]], **params))
        start = end
    return bodies


def _params(shared: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    merged = {**shared, **row}
    merged.pop("prompt")
    return json.loads(json.dumps(merged))  # a comparable copy


def _prompts_per_job(params: dict[str, Any], settings: Settings) -> int:
    pixels = int(params.get("width", 512)) * int(params.get("height", 512))
    by_pixels = settings.max_pixels_per_job // pixels
    return max(1, min(settings.max_prompts_per_job, settings.max_images_per_job, by_pixels))


def output(images_b64: list[str], nsfw: list[bool]) -> list[ScoreOutput]:
    return [ScoreOutput(generated_image=images_b64, nsfw_content_detected=[str(f) for f in nsfw])]
