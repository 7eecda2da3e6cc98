"""``sdq up``: the whole service on one machine, for development and demos."""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import httpx

from cli.services import (
    DEV_S3_KEY,
    DEV_S3_SECRET,
    Service,
    sdq_command,
    spawn,
    start_redis,
    start_s3,
    wait_for_port,
)


def run_stack(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    env = dict(os.environ)
    services: list[Service] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        if "SDQ_REDIS_URL" not in env:
            redis = start_redis(data_dir / "redis")
            services.append(redis)
            env["SDQ_REDIS_URL"] = redis.extra["url"]
        if "SDQ_S3_ENDPOINT_URL" not in env:
            s3 = start_s3(data_dir / "s3")
            services.append(s3)
            env.update(
                SDQ_S3_ENDPOINT_URL=s3.extra["url"],
                SDQ_S3_ACCESS_KEY_ID=DEV_S3_KEY,
                SDQ_S3_SECRET_ACCESS_KEY=DEV_S3_SECRET,
            )
        env.setdefault("SDQ_S3_CREATE_BUCKET", "true")
        # A local stack: development mode, and (unless --auth) no API keys. Said out loud at
        # start, because production refuses both.
        env.setdefault("SDQ_ENV", "dev")
        env["SDQ_AUTH_ENABLED"] = "true" if args.auth else "false"
        env.setdefault("SDQ_MODEL", "tiny")
        logs = data_dir / "logs"
        services.append(_webhook_worker(env, logs))
        for n in range(args.workers):
            proc = spawn(
                "worker",
                sdq_command("worker", "--hostname", f"worker{n}@%h"),
                log_path=logs / f"worker{n}.log",
                env=env,
            )
            services.append(Service(f"worker{n}", proc, log_path=logs / f"worker{n}.log"))
        api_log = logs / "api.log"
        proc = spawn(
            "api",
            sdq_command("api", "--host", args.host, "--port", str(args.port)),
            log_path=api_log,
            env=env,
        )
        services.append(Service("api", proc, args.port, api_log))
        wait_for_port(args.port, timeout_s=60, proc=proc)
        _report(args, env, data_dir)
        while not stopping:
            for service in services:
                if service.proc.poll() is not None:
                    code, log = service.proc.returncode, service.log_path
                    print(f"{service.name} exited ({code}); see {log}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping...", file=sys.stderr)
        for service in reversed(services):
            service.stop()
        print("stopped", file=sys.stderr)


def _webhook_worker(env: dict[str, str], logs: Path) -> Service:
    """A CPU webhook worker, with a signing secret for this session unless one is set."""
    if not env.get("SDQ_WEBHOOK_SECRET"):
        env["SDQ_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    proc = spawn(
        "webhooks",
        sdq_command("worker", "--queues", "webhooks", "--hostname", "webhooks@%h"),
        log_path=logs / "webhooks.log",
        env=env,
    )
    return Service("webhooks", proc, log_path=logs / "webhooks.log")


def _report(args: argparse.Namespace, env: dict[str, str], data_dir: Path) -> None:
    api = f"http://{args.host}:{args.port}"
    bucket = env.get("SDQ_S3_BUCKET", "sdq")
    try:
        httpx.get(f"{api}/healthz", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        print(f"API not healthy: {exc}", file=sys.stderr)
    print(
        "\n".join(
            [
                "sdq is up (Ctrl-C stops everything)",
                f"  API       {api}   (docs: {api}/docs)",
                f"  Redis     {env['SDQ_REDIS_URL']}",
                f"  S3        {env['SDQ_S3_ENDPOINT_URL']}  bucket {bucket}",
                f"  model     {env['SDQ_MODEL']}  ({args.workers} worker(s))",
                f"  auth      {_auth_line(args, env)}",
                f"  webhooks  signed with {env['SDQ_WEBHOOK_SECRET']} (SDQ_WEBHOOK_SECRET)",
                f"  data      {data_dir}   logs in {data_dir / 'logs'}",
                f"  try:      sdq submit --api-url {api} --wait 'an astronaut riding a horse'",
            ]
        ),
        flush=True,
    )


def _auth_line(args: argparse.Namespace, env: dict[str, str]) -> str:
    if args.auth:
        create = f"SDQ_REDIS_URL={env['SDQ_REDIS_URL']} sdq keys create --tenant NAME"
        return f"ON: send 'Authorization: Bearer <key>'; make a key with: {create}"
    return "OFF (local development; every request acts as tenant 'default'; --auth keeps it on)"
