"""The pipeline holder: the one place that knows torch and diffusers.

A worker process loads the pipeline once and reuses it for every job. Loading happens in the
process that runs jobs (the Celery prefork child), never in the parent: CUDA does not survive a
fork.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.schemas import JobRequest, Scheduler
from common.settings import Settings

log = logging.getLogger(__name__)

# on_step(step, total_steps) runs after every denoising step; raising stops the generation.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Generation:
    images: list[np.ndarray]  # HxWx3 uint8, flagged images already black
    nsfw: list[bool]


def _scheduler_table() -> dict[Scheduler, tuple[Any, dict[str, Any]]]:
    import diffusers as d

    dpmpp = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    return {
        Scheduler.PNDM: (d.PNDMScheduler, {"skip_prk_steps": True}),
        Scheduler.DDIM: (d.DDIMScheduler, {}),
        Scheduler.EULER: (d.EulerDiscreteScheduler, {}),
        Scheduler.EULER_A: (d.EulerAncestralDiscreteScheduler, {}),
        Scheduler.DPMPP_2M: (d.DPMSolverMultistepScheduler, dpmpp),
        Scheduler.DPMPP_2M_KARRAS: (
            d.DPMSolverMultistepScheduler,
            {**dpmpp, "use_karras_sigmas": True},
        ),
        Scheduler.HEUN: (d.HeunDiscreteScheduler, {}),
        Scheduler.UNIPC: (d.UniPCMultistepScheduler, {}),
    }


class PipelineHolder:
    """Loads a StableDiffusionPipeline once and runs jobs on it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loads = 0
        self.device = "unloaded"
        self.dtype = "unloaded"
        self._pipe: Any = None
        self._scheduler_config: Any = None
        self._schedulers: dict[Scheduler, tuple[Any, dict[str, Any]]] = {}

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def model_path(self) -> str:
        """The id or folder ``from_pretrained`` reads; 'tiny' is built on first use."""
        if self.settings.model == "tiny":
            from worker.tiny import ensure_tiny_model

            return str(ensure_tiny_model(self.settings.cache_dir))
        return self.settings.model

    def load(self) -> None:
        import torch
        from diffusers import StableDiffusionPipeline

        device = self._resolve_device(torch)
        dtype = self._resolve_dtype(torch, device)
        started = time.perf_counter()
        pipe = StableDiffusionPipeline.from_pretrained(
            self.model_path(), dtype=dtype, variant=self.settings.model_variant
        )
        pipe = pipe.to(device)
        if device.startswith("cuda"):
            # PyTorch 2's scaled-dot-product attention is diffusers' default processor there.
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe
        self._scheduler_config = pipe.scheduler.config
        self._schedulers = _scheduler_table()
        self.device, self.dtype = device, str(dtype).removeprefix("torch.")
        self.loads += 1
        self._warm_up()
        log.info(
            "pipeline %s loaded on %s (%s) in %.1fs",
            self.settings.model,
            self.device,
            self.dtype,
            time.perf_counter() - started,
        )

    def _resolve_device(self, torch: Any) -> str:
        if self.settings.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.settings.device

    def _resolve_dtype(self, torch: Any, device: str) -> Any:
        if self.settings.dtype == "auto":
            return torch.float16 if device.startswith("cuda") else torch.float32
        return getattr(torch, self.settings.dtype)

    def _warm_up(self) -> None:
        """One small generation so the first job does not pay for lazy initialisation."""
        warm = JobRequest(
            prompt=["warm-up"],
            num_images_per_prompt=1,
            width=64,
            height=64,
            num_inference_steps=1,
            guidance_scale=7.5,
            scheduler=Scheduler.PNDM,
            seed=0,
            output_format="png",
        )
        self.generate(warm, lambda step, total: None)

    def generate(self, request: JobRequest, on_step: StepCallback) -> Generation:
        """Run one job: safety checker included; flagged images come back black."""
        import torch

        if self._pipe is None:
            self.load()
        pipe = self._pipe
        scheduler_cls, overrides = self._schedulers[request.scheduler]
        pipe.scheduler = scheduler_cls.from_config(self._scheduler_config, **overrides)
        # One CPU generator per image: image n depends on seed + n alone, on any device and in
        # any batch, so it can be reproduced by itself.
        generators = [
            torch.Generator("cpu").manual_seed(request.image_seed(n))
            for n in range(request.num_images)
        ]
        requested = request.num_inference_steps

        def callback(pipeline: Any, index: int, timestep: Any, tensors: dict) -> dict:
            # Some samplers take more than one model call per step; report in requested steps.
            total_calls = max(pipeline.num_timesteps, 1)
            on_step(min(requested, round((index + 1) * requested / total_calls)), requested)
            return tensors

        output = pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            num_images_per_prompt=request.num_images_per_prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=requested,
            guidance_scale=request.guidance_scale,
            generator=generators,
            output_type="np",
            callback_on_step_end=callback,
        )
        images = (np.clip(output.images, 0.0, 1.0) * 255).round().astype(np.uint8)
        nsfw = output.nsfw_content_detected or [False] * len(images)
        return Generation(images=list(images), nsfw=[bool(flag) for flag in nsfw])

    def gpu_info(self) -> dict[str, Any]:
        """Name and memory of the GPU in use, for heartbeats (empty off CUDA)."""
        if not self.device.startswith("cuda"):
            return {}
        import torch

        props = torch.cuda.get_device_properties(torch.device(self.device))
        return {"gpu_name": props.name, "gpu_memory_total_mb": props.total_memory // 2**20}
