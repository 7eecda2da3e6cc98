"""The ``sdq`` command."""

from __future__ import annotations

import argparse
import os
import sys

from cli import keys, webhooks
from common.logs import configure_logging
from common.schemas import OutputFormat, Scheduler
from common.settings import get_settings


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=get_settings().log_level.lower(),
        log_config=None,  # the root logger's JSON handler (common.logs) formats uvicorn's too
        access_log=False,  # api.middleware writes access lines, with tenant and job id
        proxy_headers=True,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    # Celery's warm shutdown on SIGTERM waits for the running job without limit; as SIGQUIT it
    # is a soft shutdown: the job gets SDQ_SHUTDOWN_GRACE_S, then goes back to the queue.
    # billiard reads this when it is first imported, so set it before importing the worker.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    settings = get_settings()
    queues = [q.strip() for q in (args.queues or "").split(",") if q.strip()]
    if settings.webhook_queue in queues:
        if len(queues) > 1:
            print(
                f"sdq worker: serve {settings.webhook_queue!r} in a worker of its own "
                "(webhook deliveries must never wait behind a GPU job)",
                file=sys.stderr,
            )
            return 2
        return _webhook_worker(args)
    from worker.app import app

    # Interactive first: with the "priority" queue order, batch jobs run only when no
    # interactive job waits. One process per GPU; the pipeline lives in the prefork child, so
    # a crash there loses no message.
    queues = args.queues or f"{settings.queue},{settings.batch_queue_name}"
    return _run_celery(app, args, queues, pool="prefork", concurrency=1)


def _webhook_worker(args: argparse.Namespace) -> int:
    """A CPU worker for webhook deliveries: threads, no pipeline, no torch."""
    from worker.webhook_app import app

    settings = get_settings()
    # Deliveries wait on receivers: threads, not processes.
    return _run_celery(
        app, args, settings.webhook_queue, pool="threads", concurrency=settings.webhook_concurrency
    )


def _run_celery(app, args: argparse.Namespace, queues: str, *, pool: str, concurrency: int) -> int:
    argv = [
        "worker",
        f"--queues={queues}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "--without-mingle",
        "--without-gossip",
        f"--loglevel={get_settings().log_level}",
    ]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return 0


def _worker_check(args: argparse.Namespace) -> int:
    from worker.liveness import check, node_name

    problems, summary = check(
        get_settings(), node_name(args.node), ready=args.ready, ping_timeout_s=args.timeout
    )
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: {summary}")
    return 1 if problems else 0


def _up(args: argparse.Namespace) -> int:
    from cli.up import run_stack

    return run_stack(args)


def _ready(args: argparse.Namespace) -> int:
    from cli.client import Client

    return Client(args.api_url, args.api_key).wait_ready(args.timeout)


def _submit(args: argparse.Namespace) -> int:
    from cli.client import Client

    return Client(args.api_url, args.api_key).submit(args)


def _status(args: argparse.Namespace) -> int:
    from cli.client import Client

    return Client(args.api_url, args.api_key).show(args.job_id)


def _cancel(args: argparse.Namespace) -> int:
    from cli.client import Client

    return Client(args.api_url, args.api_key).cancel(args.job_id)


def build_parser() -> argparse.ArgumentParser:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="sdq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("api", help="run the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_api)

    p = sub.add_parser(
        "worker",
        help=f"run a GPU worker (one per GPU), or with --queues {settings.webhook_queue} "
        "a CPU webhook worker",
    )
    p.add_argument(
        "--queues",
        help=f"comma-separated queues, first served first (default "
        f"{settings.queue},{settings.batch_queue_name}); '{settings.webhook_queue}' alone "
        "runs a webhook worker (no pipeline)",
    )
    p.add_argument("--hostname", help="Celery node name, e.g. gpu0@%%h")
    p.set_defaults(func=_worker)

    p = sub.add_parser(
        "worker-check", help="exit 0 if a worker is consuming (a liveness or startup probe)"
    )
    p.add_argument("--node", default="celery@%h", help="Celery node name, e.g. gpu0@%%h")
    p.add_argument("--ready", action="store_true", help="also require the pipeline loaded")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the ping")
    p.set_defaults(func=_worker_check)

    p = sub.add_parser("up", help="run a local stack: Redis, S3, a worker and the API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data-dir", default=".sdq", help="where Redis and S3 keep their data")
    p.add_argument("--auth", action="store_true", help="keep API keys required (default: auth off)")
    p.set_defaults(func=_up)

    keys.add_parser(sub)
    webhooks.add_parser(sub)

    client_args = argparse.ArgumentParser(add_help=False)
    client_args.add_argument("--api-url", default=settings.api_url)
    client_args.add_argument(
        "--api-key",
        default=settings.api_key.get_secret_value() if settings.api_key else None,
        help="API key to send (default SDQ_API_KEY)",
    )

    p = sub.add_parser("ready", parents=[client_args], help="wait for the API and a worker")
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(func=_ready)

    p = sub.add_parser("submit", parents=[client_args], help="submit prompts")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--wait", action="store_true", help="show progress, then save the images")
    p.add_argument("--out", default="out", help="folder for the images (with --wait)")
    p.add_argument("--negative-prompt")
    p.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--scheduler", choices=[s.value for s in Scheduler])
    p.add_argument("--seed", type=int)
    p.add_argument("--format", choices=[f.value for f in OutputFormat])
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", parents=[client_args], help="show a job")
    p.add_argument("job_id")
    p.set_defaults(func=_status)

    p = sub.add_parser("cancel", parents=[client_args], help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=_cancel)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging(get_settings())
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
