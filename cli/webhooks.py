"""``sdq webhook-secret``: a tenant's own webhook signing secret, in Redis (SDQ_REDIS_URL).

A tenant with its own secret has its webhooks signed with it instead of SDQ_WEBHOOK_SECRET.
``new`` prints a fresh secret (alone on stdout) and keeps the tenant's previous one signing
too, so receivers can switch over; ``drop-old`` then stops the previous one; ``clear`` goes
back to the global secret.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys

import redis

from common import keys
from common.settings import get_settings
from common.webhooks import WebhookStore


def _store() -> WebhookStore:
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    return WebhookStore(client, ttl_s=settings.job_ttl_s)


def _current(store: WebhookStore, tenant: str) -> list[str]:
    raw = store.redis.get(keys.tenant_webhook_secrets(tenant)) or ""
    return [s for s in raw.split(",") if s]


def new(args: argparse.Namespace) -> int:
    store = _store()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    previous = _current(store, args.tenant)[:1]
    store.set_tenant_secrets(args.tenant, [secret, *previous])
    note = " (the previous one still signs too until 'drop-old')" if previous else ""
    print(f"new webhook secret for tenant {args.tenant}{note}:", file=sys.stderr)
    print(secret, flush=True)
    return 0


def drop_old(args: argparse.Namespace) -> int:
    store = _store()
    current = _current(store, args.tenant)
    if not current:
        print(f"error: tenant {args.tenant!r} has no secret of its own", file=sys.stderr)
        return 1
    store.set_tenant_secrets(args.tenant, current[:1])
    print(f"tenant {args.tenant}: only the newest secret signs now", file=sys.stderr)
    return 0


def clear(args: argparse.Namespace) -> int:
    _store().set_tenant_secrets(args.tenant, [])
    print(f"tenant {args.tenant}: signed with SDQ_WEBHOOK_SECRET again", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "webhook-secret", help="a tenant's own webhook signing secret (talks to Redis)"
    )
    commands = parser.add_subparsers(dest="webhook_secret_command", required=True)
    for name, func, text in (
        ("new", new, "make a new secret and print it; the previous one keeps signing"),
        ("drop-old", drop_old, "stop signing with the previous secret"),
        ("clear", clear, "drop the tenant's secrets: SDQ_WEBHOOK_SECRET signs again"),
    ):
        p = commands.add_parser(name, help=text)
        p.add_argument("--tenant", required=True)
        p.set_defaults(func=func)
