"""Service overhead on a CPU: what sdq adds around the model, next to a bare Celery round trip.

    .venv/bin/python bench/overhead.py [--jobs 200]

One worker, the tiny model, 64x64, 1 step. For each job, sent one at a time with
``Prefer: wait``: end-to-end latency (HTTP in, image stored, finished job out), the generation
time the worker measured, and the difference (the overhead: API, Redis, queue, PNG encode,
S3 upload, state changes, presigning). Then a burst of jobs for throughput, and the same Redis
running a no-op Celery task with apply_async().get() as the floor any Celery service pays.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import LocalStack
from cli.services import sdq_command, spawn

BODY = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 1}
NOOP_APP = """
from celery import Celery
app = Celery("noop", broker="{url}", backend="{url}")
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, worker_hijack_root_logger=False)

@app.task(name="noop")
def noop():
    return None
"""


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def latency(http: httpx.Client, jobs: int) -> dict[str, list[float]]:
    """End-to-end seconds per job, and the worker's own timings of each part."""
    parts: dict[str, list[float]] = {
        "end-to-end": [],
        "queue_s": [],
        "inference_s": [],
        "upload_s": [],
    }
    for _ in range(jobs):
        started = time.perf_counter()
        response = http.post("/v1/jobs", json=BODY, headers={"Prefer": "wait=30"})
        parts["end-to-end"].append(time.perf_counter() - started)
        job = response.json()
        assert job["status"] == "succeeded", job
        for name in ("queue_s", "inference_s", "upload_s"):
            parts[name].append(job["timings"][name])
    return parts


def throughput(http: httpx.Client, jobs: int) -> float:
    started = time.perf_counter()
    ids = [http.post("/v1/jobs", json=BODY).json()["id"] for _ in range(jobs)]
    for job_id in ids:
        while http.get(f"/v1/jobs/{job_id}").json()["status"] not in {"succeeded", "failed"}:
            time.sleep(0.01)
    return jobs / (time.perf_counter() - started)


def bare_celery(stack: LocalStack, calls: int) -> list[float]:
    module = stack.root / "noop_app.py"
    module.write_text(NOOP_APP.format(url=stack.redis.extra["url"].replace("/0", "/5")))
    env = {**stack.env, "PYTHONPATH": str(stack.root)}
    command = [
        sdq_command()[0],
        "-m",
        "celery",
        "-A",
        "noop_app",
        "worker",
        "--concurrency=1",
        "--pool=prefork",
        "--without-mingle",
        "--without-gossip",
        "--loglevel=WARNING",
    ]
    worker = spawn("noop", command, log_path=stack.root / "logs" / "noop.log", env=env)
    sys.path.insert(0, str(stack.root))
    from noop_app import app

    try:
        app.send_task("noop").get(timeout=60)  # worker is up
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            app.send_task("noop").get(timeout=10)
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        worker.terminate()
        worker.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    stack = LocalStack(workers=1, SDQ_BATCH_WINDOW_S="0")
    try:
        stack.wait_workers()
        with httpx.Client(base_url=stack.url, timeout=60) as http:
            latency(http, 10)  # warm-up
            parts = latency(http, args.jobs)
            jobs_per_s = throughput(http, args.jobs)
        celery = bare_celery(stack, args.jobs)
    finally:
        stack.stop()
    e2e, inference = parts["end-to-end"], parts["inference_s"]
    overhead = [total - gen for total, gen in zip(e2e, inference, strict=True)]
    print(f"{args.jobs} jobs, tiny model 64x64 1 step, one worker, sequential with Prefer: wait")
    rows = [("end-to-end", e2e), ("generation", inference), ("overhead", overhead)]
    rows += [(f"  of which {name}", parts[name]) for name in ("queue_s", "upload_s")]
    for name, values in rows:
        p50, p95 = pct(values, 50) * 1000, pct(values, 95) * 1000
        print(f"  {name:12s} p50 {p50:6.1f} ms   p95 {p95:6.1f} ms")
    print(
        f"  throughput   {jobs_per_s:.1f} jobs/s ({args.jobs} submitted at once, micro-batching on)"
    )
    print("bare Celery round trip (apply_async + no-op + result) on the same Redis:")
    print(f"  p50 {pct(celery, 50) * 1000:6.1f} ms   p95 {pct(celery, 95) * 1000:6.1f} ms")
    print(f"  sdq overhead / bare Celery (p50): {pct(overhead, 50) / pct(celery, 50):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
