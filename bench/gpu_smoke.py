"""GPU smoke check: the worker's pipeline holder loads the tiny model fp16 on CUDA and runs.

    python bench/gpu_smoke.py            # prints device, dtype, timings, nsfw flags

Needs torch with CUDA, diffusers, transformers and sdq's common/ and worker/ packages.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from common.schemas import JobCreate, OutputFormat
from common.settings import Settings
from worker.encode import encode_image
from worker.pipeline import PipelineHolder


def main() -> int:
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as cache:
        holder = PipelineHolder(Settings(cache_dir=Path(cache)))
        started = time.perf_counter()
        holder.load()
        print(
            f"loaded on {holder.device} as {holder.dtype} in {time.perf_counter() - started:.2f}s"
        )
        print(f"gpu: {holder.gpu_info()}")
        pipe = holder._pipe
        dtypes = {
            name: str(next(m.parameters()).dtype)
            for name, m in pipe.components.items()
            if isinstance(m, torch.nn.Module)
        }
        print(f"component dtypes: {dtypes}")
        for size, steps in ((512, 30), (512, 30), (64, 1)):
            request = JobCreate(
                prompt=[
                    "a photograph of an astronaut riding a horse",
                    "a photograph of a cat riding a horse",
                ],
                width=size,
                height=size,
                num_inference_steps=steps,
                seed=42,
            ).normalised()
            steps_seen: list[int] = []
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            t0 = time.perf_counter()
            generation = holder.generate(request, lambda s, t, seen=steps_seen: seen.append(s))
            t1 = time.perf_counter()
            png = [encode_image(img, OutputFormat.PNG) for img in generation.images]
            t2 = time.perf_counter()
            print(
                f"{size}x{size} {steps} steps x2 images: generate {t1 - t0:.3f}s, "
                f"png {t2 - t1:.3f}s ({sum(map(len, png))} bytes), nsfw {generation.nsfw}, "
                f"last step {steps_seen[-1]}/{steps}, "
                f"not constant {all(i.std() > 0 for i in generation.images)}"
            )
        print(f"pipeline loads: {holder.loads}")
        if torch.cuda.is_available():
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return 0 if holder.device.startswith("cuda") and holder.dtype == "float16" else 1


if __name__ == "__main__":
    sys.exit(main())
