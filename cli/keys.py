"""``sdq keys create|list|revoke``: API keys, managed straight in Redis (SDQ_REDIS_URL).

``create`` prints the new key once, alone on stdout; only its SHA-256 digest is stored, so a
lost key cannot be shown again — revoke it and create another.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime

import redis

from common.apikeys import ApiKey, ApiKeys, InvalidTenant
from common.settings import get_settings

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min|h|hour))?\s*$")
_PER_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str) -> float:
    """``10`` or ``10/s``, ``600/m``, ``3600/h`` → requests per second."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a rate like 10/s, 600/m or 3600/h: {text!r}")
    return float(match.group(1)) / _PER_S[match.group(2) or "s"]


def _store() -> ApiKeys:
    return ApiKeys(redis.Redis.from_url(get_settings().redis_url, decode_responses=True))


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(key: ApiKey) -> str:
    settings = get_settings()
    rate = key.rate_per_s or settings.rate_limit_per_s
    burst = key.burst or settings.rate_limit_burst
    status = "active" if key.active else f"revoked {_when(key.revoked_at)}"
    return (
        f"{key.id}\t{key.tenant}\t{rate:g}/s burst {burst}\t{_when(key.created_at)}\t"
        f"{status}\t{key.name}"
    )


def create(args: argparse.Namespace) -> int:
    try:
        new = _store().create(args.tenant, name=args.name, rate_per_s=args.rate, burst=args.burst)
    except (InvalidTenant, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created key {new.record.id} for tenant {new.record.tenant}", file=sys.stderr)
    print("it is shown once, here; only its digest is stored:", file=sys.stderr)
    print(new.key, flush=True)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    print("id\ttenant\trate\tcreated\tstatus\tname")
    for key in _store().list(args.tenant):
        print(_describe(key))
    return 0


def revoke(args: argparse.Namespace) -> int:
    key = _store().revoke(args.key_id)
    if key is None:
        print(f"error: no key with id {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {key.id} (tenant {key.tenant}); it is refused from now on")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (talks to Redis)")
    commands = keys.add_subparsers(dest="keys_command", required=True)

    p = commands.add_parser("create", help="create a key and print it (once)")
    p.add_argument("--tenant", required=True, help="who the key acts for (its jobs' owner)")
    p.add_argument("--name", default="", help="a label, e.g. who holds the key")
    p.add_argument(
        "--rate", type=parse_rate, help="requests per second (10, 10/s, 600/m); default SDQ_*"
    )
    p.add_argument("--burst", type=int, help="requests at once (default SDQ_RATE_LIMIT_BURST)")
    p.set_defaults(func=create)

    p = commands.add_parser("list", help="list keys (ids, never the keys themselves)")
    p.add_argument("--tenant", help="only this tenant's keys")
    p.set_defaults(func=list_keys)

    p = commands.add_parser("revoke", help="refuse a key from the next request on")
    p.add_argument("key_id", help="the id shown by 'sdq keys list' (sdq_<id>_...)")
    p.set_defaults(func=revoke)
