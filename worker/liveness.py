"""``sdq worker-check``: is this worker still consuming, not merely alive?

Two signs, both needed (a Kubernetes exec probe runs it in the worker's container):

- a fresh heartbeat from the node's job-running process: that process is alive and reaches Redis
  (its heartbeat thread writes every ``SDQ_HEARTBEAT_INTERVAL_S``);
- an answer to Celery's ``ping`` over the broker from the node's main process: the consumer's
  event loop is running and connected. A worker that lost its broker connection and never got it
  back, or whose main process is hung, still has a running process and a fresh heartbeat — but
  it does not answer.

With ``--ready`` the pipeline must also be loaded (a startup or readiness probe).
Imports neither torch nor the worker's Celery app, so a probe costs a fraction of a second.
"""

from __future__ import annotations

import time

import redis
from celery.utils.nodenames import host_format

from common import keys
from common.queue import make_celery
from common.settings import Settings

DEFAULT_NODE = "celery@%h"  # Celery's default node name, as `sdq worker` uses without --hostname


def node_name(pattern: str) -> str:
    """Expand ``%h`` (host name), ``%n`` and ``%d`` as ``sdq worker --hostname`` does."""
    return host_format(pattern)


def heartbeats(client: redis.Redis, node: str) -> list[dict[str, str]]:
    """The live heartbeats of the node's worker processes (named ``node:pid``), GPU workers'
    and webhook workers' alike."""
    names = [
        n
        for index in (keys.workers(), keys.webhook_workers())
        for n in client.zrange(index, 0, -1)
        if n.startswith(f"{node}:")
    ]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.worker(name))
    return [beat for beat in pipe.execute() if beat]


def heartbeat_problems(
    beats: list[dict[str, str]], settings: Settings, *, ready: bool, now: float
) -> list[str]:
    max_age_s = settings.heartbeat_interval_s * keys.HEARTBEAT_MISSES
    fresh = [b for b in beats if now - float(b.get("last_beat") or 0) <= max_age_s]
    if not fresh:
        return [f"no heartbeat in the last {max_age_s:g}s from a process of this node"]
    if ready and all(b.get("state") == "loading" for b in fresh):
        return ["the pipeline is still loading"]
    return []


def check(
    settings: Settings, node: str, *, ready: bool = False, ping_timeout_s: float = 3.0
) -> tuple[list[str], str]:
    """Problems found (empty when the worker is consuming), and a one-line summary."""
    client = redis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
    )
    try:
        beats = heartbeats(client, node)
    except redis.RedisError as exc:
        return [f"Redis unreachable: {exc}"], ""
    finally:
        client.close()
    problems = heartbeat_problems(beats, settings, ready=ready, now=time.time())
    app = make_celery(settings)
    try:
        replies = app.control.ping(destination=[node], timeout=ping_timeout_s)
    except Exception as exc:  # the broker itself is unreachable
        return [*problems, f"ping failed: {exc}"], ""
    finally:
        app.close()
    if not any(node in reply for reply in replies):
        problems.append(f"no answer to a ping over the broker within {ping_timeout_s:g}s")
    states = ",".join(sorted(b.get("state", "?") for b in beats)) or "none"
    return problems, f"{node}: answers pings; processes: {states}"
