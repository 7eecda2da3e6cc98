"""API under load: one uvicorn process, 64 concurrent clients from a second process.

    .venv/bin/python bench/api_load.py [--seconds 10] [--concurrency 64]

Measures requests/s and p50/p99 latency of ``POST /v1/jobs`` and ``GET /v1/jobs/{id}``, and of
a bare FastAPI endpoint that does one Redis write, on the same Redis, as the floor. Jobs go to a
queue no worker consumes. The load generator is ``wrk`` (Debian's package) when installed, else
an asyncio httpx client, in its own process; on a 2-core machine it competes with the server for
CPU, so read the ratio more than the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BODY = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 1}
BARE_APP = """
import os, uuid
import redis.asyncio as aioredis
from fastapi import FastAPI

app = FastAPI()
client = aioredis.Redis.from_url(os.environ["BARE_REDIS_URL"])

@app.post("/write")
async def write() -> dict:
    key = uuid.uuid4().hex
    await client.set(f"bare:{key}", "1", ex=60)
    return {"id": key}
"""


async def _load(url: str, method: str, body: dict | None, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def user() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.request(method, url, json=body)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code >= 400

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"rps": len(latencies) / elapsed, "p50": cuts[49], "p99": cuts[98], "errors": errors}


def run_client(url: str, method: str, body: dict | None, concurrency: int, seconds: float) -> dict:
    """The load generator, in a second process."""
    if shutil.which("wrk"):
        return _wrk(url, method, body, concurrency, seconds)
    command = [sys.executable, __file__, "--client", url, method, json.dumps(body),
               str(concurrency), str(seconds)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _wrk(url: str, method: str, body: dict | None, concurrency: int, seconds: float) -> dict:
    script = Path(tempfile.mkdtemp()) / "request.lua"
    script.write_text(
        f"wrk.method = {json.dumps(method)}\n"
        f"wrk.body = {json.dumps(json.dumps(body) if body else '')}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    command = ["wrk", "-t2", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
               "-s", str(script), url]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()
        return float(value) * _UNIT_S[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": int(errors.group(1)) if errors else 0,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, method, body, concurrency, seconds = sys.argv[2:7]
        result = asyncio.run(_load(url, method, json.loads(body), int(concurrency), float(seconds)))
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    from bench.stack import LocalStack
    from cli.services import free_port, spawn, wait_for_port

    stack = LocalStack(workers=0, SDQ_QUEUE="bench.unconsumed")
    bare_port = free_port()
    (stack.root / "bare_app.py").write_text(BARE_APP)
    bare_env = {
        **stack.env,
        "BARE_REDIS_URL": stack.redis.extra["url"],
        "PYTHONPATH": str(stack.root),
    }
    bare_command = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(bare_port)]
    bare = spawn("bare", bare_command, log_path=stack.root / "logs" / "bare.log", env=bare_env)
    try:
        wait_for_port(bare_port, proc=bare)
        job_id = httpx.post(f"{stack.url}/v1/jobs", json=BODY).json()["id"]
        cases = [
            ("POST /v1/jobs", f"{stack.url}/v1/jobs", "POST", BODY),
            ("GET /v1/jobs/{id}", f"{stack.url}/v1/jobs/{job_id}", "GET", None),
            ("bare POST (1 Redis write)", f"http://127.0.0.1:{bare_port}/write", "POST", None),
        ]
        results = {}
        for name, url, method, body in cases:
            run_client(url, method, body, args.concurrency, 2)  # warm-up
            results[name] = run_client(url, method, body, args.concurrency, args.seconds)
    finally:
        bare.terminate()
        bare.wait()
        stack.stop()
    generator = "wrk -t2" if shutil.which("wrk") else "an asyncio httpx client"
    print(
        f"one uvicorn process, {args.concurrency} connections from {generator}, "
        f"{args.seconds:.0f}s each"
    )
    bare_rps = results["bare POST (1 Redis write)"]["rps"]
    for name, r in results.items():
        print(
            f"  {name:26s} {r['rps']:7.0f} req/s   p50 {r['p50'] * 1000:6.1f} ms   "
            f"p99 {r['p99'] * 1000:6.1f} ms   errors {r['errors']}   "
            f"{r['rps'] / bare_rps:.2f}x of bare"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
