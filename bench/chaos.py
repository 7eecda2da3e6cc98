"""Chaos run: 300 jobs through the API while workers are SIGKILLed, Redis restarts and storage
goes away for 20 seconds. Prints what happened to every job; exits 1 if any job was lost or done
twice.

    .venv/bin/python bench/chaos.py [--jobs 300] [--workers 3] [--kills 5] [--outage-s 20]

Everything runs on this machine (tiny model, 64x64, 2 steps): its own redis-server with AOF,
its own rclone S3 server, worker processes and one API process, all on free loopback ports.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import LocalStack
from cli.services import start_s3
from common import keys
from common.storage import Storage

TERMINAL = {"succeeded", "failed", "canceled", "expired"}


class Stack(LocalStack):
    """The local stack with tight lease and reaper timings, and a way to kill workers."""

    def __init__(self, workers: int) -> None:
        super().__init__(
            workers=workers,
            SDQ_S3_BUCKET="chaos",
            SDQ_LEASE_TTL_S="3",
            SDQ_REAPER_INTERVAL_S="2",
            SDQ_STORAGE_RETRY_S="10",
            SDQ_HEARTBEAT_INTERVAL_S="1",
            SDQ_LOG_LEVEL="INFO",
        )

    def kill_a_child(self, rng: random.Random) -> str:
        """SIGKILL one prefork child (the process holding the pipeline), as an OOM kill would."""
        worker = rng.choice(self.workers)
        children = subprocess.run(
            ["pgrep", "-P", str(worker.proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        if not children:
            return f"{worker.name}: no child to kill"
        os.kill(int(children[0]), signal.SIGKILL)
        return f"{worker.name}: SIGKILL child {children[0]}"


def submit_all(url: str, total: int, accepted: list[str], refused: collections.Counter) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        n = 0
        while len(accepted) < total:
            body = {"prompt": f"chaos {n}", "width": 64, "height": 64, "num_inference_steps": 2}
            try:
                response = http.post("/v1/jobs", json=body)
            except httpx.HTTPError as exc:
                refused[type(exc).__name__] += 1
                time.sleep(0.2)
                continue
            if response.status_code == 202:
                accepted.append(response.json()["id"])
                n += 1
            else:
                refused[str(response.status_code)] += 1
                time.sleep(0.2)
            time.sleep(0.02)


def chaos_schedule(stack: Stack, args: argparse.Namespace, rng: random.Random, log: list) -> None:
    start = time.monotonic()
    events: list[tuple[float, str]] = [(rng.uniform(2, 40), "kill") for _ in range(args.kills)]
    events += [(12.0, "redis"), (20.0, "s3-stop"), (20.0 + args.outage_s, "s3-start")]
    for at, what in sorted(events):
        time.sleep(max(0.0, at - (time.monotonic() - start)))
        if what == "kill":
            log.append((time.monotonic() - start, stack.kill_a_child(rng)))
        elif what == "redis":
            stack.restart_redis()
            log.append((time.monotonic() - start, "redis restarted"))
        elif what == "s3-stop":
            stack.s3.stop()
            log.append((time.monotonic() - start, "s3 stopped"))
        else:
            stack.s3 = start_s3(stack.root / "s3", port=stack.s3.port)
            log.append((time.monotonic() - start, "s3 started"))


def audit(stack: Stack, ids: list[str], timeout_s: float) -> tuple[dict, int, int, int]:
    """Wait for every job to end, then count outcomes, lost and duplicated jobs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = [stack.client.hget(keys.job(j), "status") for j in ids]
        if all(s in TERMINAL for s in statuses):
            break
        time.sleep(1)
    storage = Storage(stack.settings)
    outcomes: collections.Counter = collections.Counter()
    lost = duplicated = missing_objects = 0
    for job_id in ids:
        raw = stack.client.hgetall(keys.job(job_id))
        status = raw.get("status")
        if status not in TERMINAL:
            lost += 1
            outcomes[f"lost ({status})"] += 1
            continue
        code = ""
        if status == "failed":
            code = raw.get("error", "")
            code = code.split('"code":"', 1)[-1].split('"', 1)[0] if code else "?"
        outcomes[f"{status} {code}".strip()] += 1
        events = stack.client.xrange(keys.job_events(job_id))
        terminal_events = [
            e for _, e in events if e.get("type") == "status" and e["status"] in TERMINAL
        ]
        listed = storage._client.list_objects_v2(Bucket=storage.bucket, Prefix=f"jobs/{job_id}/")
        objects = [o["Key"] for o in listed.get("Contents", [])]
        if len(terminal_events) != 1 or len(objects) != len(set(objects)):
            duplicated += 1
        if status == "succeeded" and sorted(o.rsplit("/", 1)[1] for o in objects) != [
            "0.png",
            "result.json",
        ]:
            missing_objects += 1
    return dict(outcomes), lost, duplicated, missing_objects


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--outage-s", type=float, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    stack = Stack(args.workers)
    try:
        stack.wait_workers()
        accepted: list[str] = []
        refused: collections.Counter = collections.Counter()
        chaos_log: list[tuple[float, str]] = []
        submitter = threading.Thread(
            target=submit_all, args=(stack.url, args.jobs, accepted, refused)
        )
        submitter.start()
        chaos_schedule(stack, args, rng, chaos_log)
        submitter.join()
        outcomes, lost, duplicated, missing = audit(stack, accepted, timeout_s=600)
    finally:
        stack.stop()
    print(
        f"chaos run: {args.jobs} jobs, {args.workers} workers, {args.kills} SIGKILLs, "
        f"1 Redis restart, {args.outage_s:.0f}s storage outage ({time.monotonic() - started:.0f}s)"
    )
    for at, what in chaos_log:
        print(f"  t={at:5.1f}s  {what}")
    print(f"submitted (202): {len(accepted)}   refused while down: {dict(refused) or 0}")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome:32s} {count}")
    print(f"lost: {lost}   duplicated: {duplicated}   succeeded with missing objects: {missing}")
    print(f"logs: {stack.root / 'logs'}")
    return 1 if lost or duplicated or missing else 0


if __name__ == "__main__":
    sys.exit(main())
