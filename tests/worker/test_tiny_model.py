"""The tiny model: real classes, SD v1.5 geometry, deterministic build, from_pretrained load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from common.schemas import JobCreate, Scheduler
from common.settings import Settings
from worker.pipeline import PipelineHolder
from worker.tiny import build_tiny_pipeline


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_build_is_deterministic(tmp_path: Path, model_cache: Path) -> None:
    build_tiny_pipeline(tmp_path / "again")
    original = model_cache / "models" / "tiny-v1"
    assert _digest(tmp_path / "again") == _digest(original)
    assert len(_digest(original)) == 4  # unet, vae, text encoder, safety checker


def test_geometry_matches_sd15(model_cache: Path) -> None:
    holder = PipelineHolder(Settings(cache_dir=model_cache))
    holder.load()
    pipe = holder._pipe
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.in_channels == 4
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert holder.loads == 1
    assert (holder.device, holder.dtype) == ("cpu", "float32")


def test_every_scheduler_runs_and_reports_progress(model_cache: Path) -> None:
    holder = PipelineHolder(Settings(cache_dir=model_cache))
    for scheduler in Scheduler:
        seen: list[tuple[int, int]] = []
        request = JobCreate(
            prompt="x", width=64, height=64, num_inference_steps=4, scheduler=scheduler, seed=1
        ).normalised()
        generation = holder.generate(
            request, lambda step, total, seen=seen: seen.append((step, total))
        )
        assert generation.images[0].shape == (64, 64, 3)
        assert generation.images[0].dtype == np.uint8
        assert seen[-1] == (4, 4), scheduler
        assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert holder.loads == 1
