"""The pipeline holder: the one place that knows torch and diffusers.

A worker process loads the pipeline once and reuses it for every job. Loading happens in the
process that runs jobs (the Celery prefork child), never in the parent: CUDA does not survive a
fork.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.schemas import JobRequest, Scheduler
from common.settings import Settings

log = logging.getLogger(__name__)

# on_step(step, total_steps) runs after every denoising step; raising stops the generation.
StepCallback = Callable[[int, int], None]


def batch_key(request: JobRequest) -> tuple:
    """Jobs with equal keys can share one batch: one latent shape, one schedule, one guidance."""
    return (
        request.width,
        request.height,
        request.num_inference_steps,
        request.scheduler,
        request.guidance_scale,
    )


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
            # PyTorch 2's scaled-dot-product attention is diffusers' default processor there;
            # channels-last suits the convolutions of the UNet and the VAE on tensor cores.
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
            if self.settings.compile:
                pipe.unet = torch.compile(pipe.unet)
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
        """One generation so the first job does not pay for lazy initialisation (CUDA context,
        kernel selection, compilation): at the default size on a GPU, tiny on a CPU."""
        size = 512 if self.device.startswith("cuda") else 64
        warm = JobRequest(
            prompt=["warm-up"],
            num_images_per_prompt=1,
            width=size,
            height=size,
            num_inference_steps=2,
            guidance_scale=7.5,
            scheduler=Scheduler.PNDM,
            seed=0,
            output_format="png",
        )
        self.generate(warm, lambda step, total: None)

    def generate(self, request: JobRequest, on_step: StepCallback) -> Generation:
        """Run one job: safety checker included; flagged images come back black."""
        return self.generate_batch([request], on_step)[0]

    def generate_batch(
        self, requests: Sequence[JobRequest], on_step: StepCallback
    ) -> list[Generation]:
        """Run compatible jobs (same :func:`batch_key`) as one batch; one Generation per job.

        Every image keeps its own generator, seeded with its own seed, so each image is the
        same (up to float rounding in batched kernels) whatever else shares its batch.
        """
        import torch

        if self._pipe is None:
            self.load()
        first = requests[0]
        if any(batch_key(r) != batch_key(first) for r in requests):
            raise ValueError("requests in one batch must share size, steps, scheduler, guidance")
        pipe = self._pipe
        scheduler_cls, overrides = self._schedulers[first.scheduler]
        pipe.scheduler = scheduler_cls.from_config(self._scheduler_config, **overrides)
        prompts: list[str] = []
        negatives: list[str] = []
        generators = []
        for request in requests:
            for n in range(request.num_images):
                index = request.prompt_index(n)
                prompts.append(request.prompt[index])
                negatives.append(request.negative_prompt[index] if request.negative_prompt else "")
                # CPU generators: the same seed gives the same noise on every device.
                generators.append(torch.Generator("cpu").manual_seed(request.image_seed(n)))
        requested = first.num_inference_steps

        def callback(pipeline: Any, index: int, timestep: Any, tensors: dict) -> dict:
            # Some samplers take more than one model call per step; report in requested steps.
            total_calls = max(pipeline.num_timesteps, 1)
            on_step(min(requested, round((index + 1) * requested / total_calls)), requested)
            return tensors

        output = pipe(
            prompt=prompts,
            negative_prompt=negatives,  # "" is what diffusers uses when there is none
            num_images_per_prompt=1,
            width=first.width,
            height=first.height,
            num_inference_steps=requested,
            guidance_scale=first.guidance_scale,
            generator=generators,
            output_type="np",
            callback_on_step_end=callback,
        )
        images = list((np.clip(output.images, 0.0, 1.0) * 255).round().astype(np.uint8))
        nsfw = [bool(flag) for flag in (output.nsfw_content_detected or [False] * len(images))]
        generations, offset = [], 0
        for request in requests:
            end = offset + request.num_images
            generations.append(Generation(images=images[offset:end], nsfw=nsfw[offset:end]))
            offset = end
        return generations

    def gpu_info(self) -> dict[str, Any]:
        """Name and memory of the GPU in use, for heartbeats (empty off CUDA)."""
        if not self.device.startswith("cuda"):
            return {}
        import torch

        props = torch.cuda.get_device_properties(torch.device(self.device))
        return {"gpu_name": props.name, "gpu_memory_total_mb": props.total_memory // 2**20}
