"""Batches on the real queue, worker process and S3: a CSV of 100 prompts to a manifest, and
interactive jobs overtaking a queued batch on one worker."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

import httpx
import pytest

from common.storage import Storage
from tests.helpers import submit, wait_for, wait_job

pytestmark = pytest.mark.integration

FAST = {"width": 64, "height": 64, "num_inference_steps": 1}


def _batch(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    return client.get(f"/v1/batches/{batch_id}").raise_for_status().json()


def wait_batch(client: httpx.Client, batch_id: str, timeout_s: float = 180) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        batch = _batch(client, batch_id)
        return batch if batch["status"] in {"completed", "canceled", "failed"} else None

    return wait_for(probe, timeout_s=timeout_s, interval_s=0.25, what=f"batch {batch_id} to end")


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _manifest(storage: Storage, batch: dict) -> tuple[list[dict], list[dict]]:
    files = batch["results"]
    predictions = httpx.get(files["predictions_csv"]["url"], timeout=10)  # presigned
    assert predictions.status_code == 200
    table = list(csv.DictReader(io.StringIO(predictions.text)))
    lines = storage.get(files["results_jsonl"]["key"]).decode().splitlines()
    return table, [json.loads(line) for line in lines]


def test_csv_of_100_prompts_to_a_manifest(client: httpx.Client, storage: Storage) -> None:
    prompts = [f'prompt {n}, with "quotes"' for n in range(100)]
    upload = io.StringIO()
    writer = csv.writer(upload)
    writer.writerow(["prompt", "negative_prompt"])
    for n, prompt in enumerate(prompts):
        writer.writerow([prompt, "blurry" if n % 10 == 0 else ""])
    response = client.post(
        "/v1/batches/upload",
        files={"file": ("prompts.csv", upload.getvalue().encode(), "text/csv")},
        data={"parameters": json.dumps({**FAST, "seed": 1000}), "metadata": '{"run": "t"}'},
    )
    assert response.status_code == 202, response.text
    created = response.json()
    assert (created["total"], created["status"]) == (100, "in_progress")

    # The worker that ends the last job writes the manifest: nobody reads the batch meanwhile.
    wait_for(
        lambda: storage.exists(f"batches/{created['id']}/predictions.csv"),
        timeout_s=180,
        interval_s=0.25,
        what="the worker to write the manifest",
    )
    batch = wait_batch(client, created["id"])

    assert batch["status"] == "completed"
    assert batch["counts"]["succeeded"] == 100
    assert batch["fraction_done"] == 1.0
    assert _when(batch["finished_at"]) >= _when(batch["created_at"])
    assert batch["metadata"] == {"run": "t"}
    table, results = _manifest(storage, batch)
    assert len(table) == len(results) == 100
    assert list(table[0]) == [
        "row",
        "prompt",
        "status",
        "image_key",
        "image_url",
        "seed",
        "nsfw_content_detected",
        "error",
        "job_id",
    ]
    for n, (row, result) in enumerate(zip(table, results, strict=True)):
        assert row["row"] == str(n + 1) == str(result["row"])
        assert row["prompt"] == prompts[n] == result["prompt"]
        assert row["status"] == "succeeded" == result["status"]
        assert row["seed"] == str(1000 + n)  # shared seed: row n gets seed + n
        assert row["image_key"] == f"jobs/{row['job_id']}/0.png" == result["image"]["key"]
        assert row["nsfw_content_detected"] == "False"
        assert row["error"] == ""
        assert result["request"]["negative_prompt"] == (["blurry"] if n % 10 == 0 else None)
        assert storage.exists(row["image_key"])
    for row in table[::25]:
        image = httpx.get(row["image_url"], timeout=10)
        assert image.status_code == 200
        assert image.content == storage.get(row["image_key"])
        job = client.get(f"/v1/jobs/{row['job_id']}").json()
        assert job["batch_id"] == batch["id"]
        assert job["request"]["seed"] == int(row["seed"])
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 409


def test_interactive_jobs_overtake_a_queued_batch_and_cancel_interrupts_it(
    client: httpx.Client, storage: Storage
) -> None:
    prompts = [f"batch row {n}" for n in range(8)]
    # Different step counts: a worker may not run them together as one GPU batch.
    rows = [{"prompt": p, "num_inference_steps": 80 + n} for n, p in enumerate(prompts)]
    slow = {"width": 128, "height": 128}
    created = client.post("/v1/batches", json={"prompts": rows, "parameters": slow})
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]

    wait_for(
        lambda: _batch(client, batch_id)["counts"]["running"] == 1,
        what="the first batch job to start",
    )
    # Different step counts again, so each interactive job needs a turn of its own.
    interactive = [
        submit(client, prompt=f"interactive {n}", width=64, height=64, num_inference_steps=n + 1)
        for n in range(3)
    ]
    finished = [wait_job(client, job["id"], timeout_s=120) for job in interactive]
    assert {job["status"] for job in finished} == {"succeeded"}
    assert _batch(client, batch_id)["counts"]["queued"] >= 5  # they did not wait for the batch

    def running_batch_job() -> dict | None:
        jobs = client.get("/v1/jobs", params={"status": "running", "limit": 10}).json()["jobs"]
        mine = [j for j in jobs if j["batch_id"] == batch_id and j["progress"]["step"] >= 2]
        return mine[0] if mine else None

    interrupted = wait_for(running_batch_job, timeout_s=120, what="a batch job making progress")
    canceled = client.post(f"/v1/batches/{batch_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] in {"canceling", "canceled"}

    batch = wait_batch(client, batch_id, timeout_s=60)

    assert batch["status"] == "canceled"
    assert sum(batch["counts"].values()) == 8
    assert batch["counts"]["succeeded"] >= 1
    assert batch["counts"]["canceled"] >= 6
    stopped = client.get(f"/v1/jobs/{interrupted['id']}").json()
    assert stopped["status"] == "canceled"
    assert stopped["progress"]["step"] < stopped["progress"]["total_steps"]
    table, _ = _manifest(storage, batch)
    assert [row["prompt"] for row in table] == prompts
    for row in table:
        if row["status"] == "canceled":
            assert row["image_key"] == row["image_url"] == ""
    # On one worker, no batch job started between the first interactive submission and the
    # start of the last interactive job (one may have been taken in the instant between).
    batch_starts = [
        _when(job["started_at"])
        for row in table
        if (job := client.get(f"/v1/jobs/{row['job_id']}").json())["started_at"]
    ]
    window = (_when(finished[0]["created_at"]), max(_when(j["started_at"]) for j in finished))
    assert sum(window[0] < started < window[1] for started in batch_starts) <= 1, (
        window,
        batch_starts,
    )
