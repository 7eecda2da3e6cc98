"""The client half of the CLI: submit, watch, download, cancel over the HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from cli.events import ProgressBar, follow_job

TERMINAL = {"succeeded", "failed", "canceled", "expired"}


class Client:
    def __init__(self, api_url: str, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=api_url, timeout=30, headers=headers)

    def wait_ready(self, timeout_s: float) -> int:
        """Until the API is ready and a worker has its pipeline loaded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ready = self.http.get("/readyz").status_code == 200
                workers = self.http.get("/v1/workers").json()["workers"] if ready else []
                if any(w["state"] != "loading" for w in workers):
                    print(f"ready: {len(workers)} worker(s)")
                    return 0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        print(f"not ready after {timeout_s:.0f}s", file=sys.stderr)
        return 1

    def submit(self, args: argparse.Namespace) -> int:
        body: dict[str, Any] = {
            "prompt": args.prompts,
            "num_images_per_prompt": args.num_images,
        }
        optional = {
            "negative_prompt": args.negative_prompt,
            "width": args.width,
            "height": args.height,
            "num_inference_steps": args.steps,
            "guidance_scale": args.guidance,
            "scheduler": args.scheduler,
            "seed": args.seed,
            "output_format": args.format,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        response = self.http.post("/v1/jobs", json=body)
        if response.status_code >= 400:
            return _fail(response)
        job = response.json()
        if not args.wait:
            print(job["id"])
            return 0
        print(f"job {job['id']} queued (seed {job['request']['seed']})", file=sys.stderr)
        job = self._follow(job["id"])
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            print(f"job {job['id']} {job['status']}: {error.get('message', '')}", file=sys.stderr)
            return 1
        return self._download(job, Path(args.out))

    def _follow(self, job_id: str) -> dict[str, Any]:
        """Follow the job's Server-Sent Events, drawing its progress bar on stderr, to the end."""
        bar = ProgressBar(f"job {job_id[:8]}")
        try:
            return follow_job(self.http, job_id, bar.update)
        finally:
            bar.close()

    def _download(self, job: dict[str, Any], folder: Path) -> int:
        folder.mkdir(parents=True, exist_ok=True)
        for n, image in enumerate(job["result"]["images"]):
            path = folder / f"{job['id']}-{n}.{image['key'].rsplit('.', 1)[-1]}"
            path.write_bytes(httpx.get(image["url"], timeout=60).raise_for_status().content)
            flag = "nsfw (blacked out)" if image["nsfw_content_detected"] else "ok"
            print(f"{path}\tseed={image['seed']}\tnsfw={image['nsfw_content_detected']}\t{flag}")
        return 0

    def show(self, job_id: str) -> int:
        response = self.http.get(f"/v1/jobs/{job_id}")
        if response.status_code >= 400:
            return _fail(response)
        print(json.dumps(response.json(), indent=2))
        return 0

    def cancel(self, job_id: str) -> int:
        response = self.http.post(f"/v1/jobs/{job_id}/cancel")
        if response.status_code >= 400:
            return _fail(response)
        print(json.dumps(response.json(), indent=2))
        return 0


def _fail(response: httpx.Response) -> int:
    try:
        error = response.json()["error"]
        print(f"error {response.status_code} {error['code']}: {error['message']}", file=sys.stderr)
    except (ValueError, KeyError):
        print(f"error {response.status_code}: {response.text[:500]}", file=sys.stderr)
    return 1
