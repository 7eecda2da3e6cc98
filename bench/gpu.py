"""GPU throughput: plain diffusers batch 1 against sdq's worker path (micro-batching plus
encoding off the generation thread), on the full SD v1.5 architecture.

    python bench/gpu.py                 # on a CUDA host: SD v1.5 shapes, fp16, 512x512
    python bench/gpu.py --tiny          # anywhere: the tiny model, 64x64 (checks the script)
    python bench/gpu.py --compile       # sdq with a torch.compile'd UNet (slow to start)

The SD v1.5 model is built from its published configuration with random weights (speed does not
depend on weight values; nothing is downloaded), saved with save_pretrained and loaded through
sdq's PipelineHolder, the same path a worker takes. It prints images/s, seconds per image, GPU
busy share (NVML), peak memory and the ratio to the plain baseline. Storage I/O is left out here
(bench/overhead.py measures the service around the GPU); PNG encoding is in.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from common.schemas import JobCreate, OutputFormat
from common.settings import Settings
from worker.encode import encode_image
from worker.pipeline import PipelineHolder
from worker.tiny import SD15_SCHEDULER_CONFIG, _write_tokenizer_files, ensure_tiny_model
from worker.uploads import Uploader

PROMPT = "a photograph of an astronaut riding a horse"


def build_sd15(target: Path, device: str) -> None:
    """SD v1.5's UNet, VAE, CLIP ViT-L/14 text encoder and safety checker, random weights."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
    )

    _write_tokenizer_files(target / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(target / "tok")
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        safety_checker = StableDiffusionSafetyChecker(
            CLIPConfig(
                text_config={"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
                vision_config={
                    "hidden_size": 1024,
                    "intermediate_size": 4096,
                    "num_hidden_layers": 24,
                    "num_attention_heads": 16,
                    "image_size": 224,
                    "patch_size": 14,
                },
                projection_dim=768,
            )
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=safety_checker,
        feature_extractor=CLIPImageProcessor(),
    )
    pipe.to(torch.float16).save_pretrained(target, safe_serialization=True)


class BusySampler:
    """Average GPU utilisation (NVML) while it runs; None off CUDA."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self._nvml = pynvml
        except Exception:
            self._nvml = None

    def __enter__(self) -> BusySampler:
        if self._nvml:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def share(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


@dataclass
class Row:
    name: str
    steps: int
    batch: int
    images: int
    seconds: float
    busy: float | None
    peak_mb: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def plain(path: str, device: str, size: int, steps: int, images: int) -> Row:
    """What a user of diffusers does: from_pretrained, .to(device), one image per call."""
    from diffusers import StableDiffusionPipeline

    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(path, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPT, width=size, height=size, num_inference_steps=steps)  # warm-up
    _sync()
    _reset_peak()
    with BusySampler() as busy:
        started = time.perf_counter()
        for n in range(images):
            generator = torch.Generator("cpu").manual_seed(n)
            image = pipe(
                PROMPT, width=size, height=size, num_inference_steps=steps, generator=generator
            ).images[0]
            image.save(f"{tempfile.gettempdir()}/plain.png")  # users save what they make
        _sync()
        seconds = time.perf_counter() - started
    row = Row("plain diffusers", steps, 1, images, seconds, busy.share, _peak_mb())
    del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def sdq_path(holder: PipelineHolder, size: int, steps: int, batch: int, images: int) -> Row:
    """The worker's path: jobs batched into one generation, PNGs encoded by upload threads."""
    uploader = Uploader(threads=2, max_in_flight=2 * batch)
    encoded: list[int] = []

    def encode_all(pixels) -> None:
        encoded.extend(len(encode_image(p, OutputFormat.PNG)) for p in pixels)

    requests = [
        JobCreate(
            prompt=PROMPT, width=size, height=size, num_inference_steps=steps, seed=n
        ).normalised()
        for n in range(batch)
    ]
    holder.generate_batch(requests, lambda s, t: None)  # warm-up at this batch size
    _sync()
    _reset_peak()
    with BusySampler() as busy:
        started = time.perf_counter()
        for _ in range(images // batch):
            generations = holder.generate_batch(requests, lambda s, t: None)
            for generation in generations:
                uploader.submit(lambda g=generation: encode_all(g.images))
        uploader.wait_idle()
        seconds = time.perf_counter() - started
    uploader.drain()
    assert len(encoded) == images
    name = "sdq compiled" if holder.settings.compile else "sdq worker path"
    return Row(name, steps, batch, images, seconds, busy.share, _peak_mb())


def main() -> int:
    parser = argparse.ArgumentParser(description="GPU throughput benchmark")
    parser.add_argument("--tiny", action="store_true", help="tiny model at 64x64 (any machine)")
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--images", type=int, default=16, help="images per sdq configuration")
    parser.add_argument("--plain-images", type=int, default=4)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="sdq-bench-"))
    started = time.perf_counter()
    if args.tiny:
        path, size = str(ensure_tiny_model(work)), 64
    else:
        path, size = str(work / "sd15"), 512
        build_sd15(Path(path), device)
    print(
        f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch "
        f"{torch.__version__}, model {'tiny' if args.tiny else 'SD v1.5 (random weights)'}, "
        f"{size}x{size}, built in {time.perf_counter() - started:.0f}s",
        flush=True,
    )
    rows: list[Row] = []
    baselines: dict[int, float] = {}
    for steps in args.steps:
        row = plain(path, device, size, steps, args.plain_images)
        baselines[steps] = row.images_per_s
        rows.append(row)
        _print(row, baselines)
    for compiled in [args.compile and device == "cuda"]:
        holder = PipelineHolder(Settings(model=path, cache_dir=work, compile=compiled))
        holder.load()
        for steps in args.steps:
            for batch in args.batches:
                row = sdq_path(holder, size, steps, batch, max(args.images, batch))
                rows.append(row)
                _print(row, baselines)
        del holder
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0


def _print(row: Row, baselines: dict[int, float]) -> None:
    busy = f"{row.busy:.0%}" if row.busy is not None else "n/a"
    print(
        f"{row.name:16s} steps {row.steps:3d} batch {row.batch}  {row.images:3d} images "
        f"{row.images_per_s:7.3f} img/s  {row.seconds / row.images:7.3f} s/img  GPU busy {busy:>4s}"
        f"  peak {row.peak_mb:7.0f} MiB  x{row.images_per_s / baselines[row.steps]:.2f} vs plain",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
