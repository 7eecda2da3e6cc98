from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.schemas import MAX_SEED, JobCreate, JobStatus, OutputFormat, Scheduler


def test_defaults_follow_sd15() -> None:
    request = JobCreate(prompt="a cat").normalised()
    assert (request.width, request.height) == (512, 512)
    assert request.num_inference_steps == 50
    assert request.guidance_scale == 7.5
    assert request.scheduler is Scheduler.PNDM
    assert request.output_format is OutputFormat.PNG
    assert 0 <= request.seed <= MAX_SEED


def test_normalised_lists_and_seeds() -> None:
    request = JobCreate(
        prompt=["a", "b"], negative_prompt="blurry", num_images_per_prompt=3, seed=MAX_SEED
    ).normalised()
    assert request.prompt == ["a", "b"]
    assert request.negative_prompt == ["blurry", "blurry"]
    assert request.num_images == 6
    assert [request.prompt_index(n) for n in range(6)] == [0, 0, 0, 1, 1, 1]
    assert request.image_seed(0) == MAX_SEED
    assert request.image_seed(1) == 0  # wraps within the 32-bit seed space


@pytest.mark.parametrize("size", [64, 520, 1024])
def test_sizes_accepted(size: int) -> None:
    assert JobCreate(prompt="x", width=size, height=size).width == size


@pytest.mark.parametrize(
    "changes",
    [
        {"width": 63},
        {"width": 1032},
        {"height": 100},
        {"num_inference_steps": 151},
        {"guidance_scale": 30.5},
        {"guidance_scale": float("nan")},
        {"prompt": "x" * 2001},
        {"metadata": {f"k{n}": "v" for n in range(17)}},
        {"unknown": 1},
    ],
)
def test_limits(changes: dict) -> None:
    with pytest.raises(ValidationError):
        JobCreate(**{"prompt": "x", **changes})


def test_terminal_statuses() -> None:
    assert {s for s in JobStatus if s.is_terminal} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
        JobStatus.EXPIRED,
    }
