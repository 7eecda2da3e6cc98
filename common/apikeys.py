"""API keys: created once, shown once, stored only as a SHA-256 digest.

A key reads ``sdq_<id>_<secret>``: the 12-hex-digit id is public (listings, logs, revocation),
the secret is 256 random bits. With that much entropy a plain SHA-256 is as good as a slow
password hash, and it keeps authentication to one Redis read per request — a read that also
sees a revocation at once (no cache).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import redis

from common import keys

KEY_PATTERN = re.compile(r"^sdq_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class InvalidTenant(ValueError):
    """Tenant names go into Redis key names: letters, digits, '_', '.', '-' (1-63)."""


@dataclass(frozen=True)
class ApiKey:
    """What is stored about a key: everything but the key itself."""

    id: str
    tenant: str
    created_at: float
    name: str = ""
    rate_per_s: float | None = None  # None: settings.rate_limit_per_s
    burst: int | None = None  # None: settings.rate_limit_burst
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> ApiKey:
        return cls(
            id=raw["id"],
            tenant=raw["tenant"],
            created_at=float(raw["created_at"]),
            name=raw.get("name", ""),
            rate_per_s=float(raw["rate_per_s"]) if raw.get("rate_per_s") else None,
            burst=int(raw["burst"]) if raw.get("burst") else None,
            revoked_at=float(raw["revoked_at"]) if raw.get("revoked_at") else None,
        )


@dataclass(frozen=True)
class NewKey:
    key: str  # the only time the key exists outside its holder's hands
    record: ApiKey


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The public id of a well-formed key, else None."""
    match = KEY_PATTERN.match(key)
    return match["id"] if match else None


class ApiKeys:
    """Creates, checks, lists and revokes API keys in Redis. Safe to share between threads."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(
        self,
        tenant: str,
        *,
        name: str = "",
        rate_per_s: float | None = None,
        burst: int | None = None,
    ) -> NewKey:
        if not TENANT_PATTERN.match(tenant):
            raise InvalidTenant(f"invalid tenant name {tenant!r}: {InvalidTenant.__doc__}")
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError("the rate must be positive")
        if burst is not None and burst < 1:
            raise ValueError("the burst must be at least 1")
        while True:
            key_id = secrets.token_hex(6)
            key = f"sdq_{key_id}_{secrets.token_urlsafe(32)}"
            record = ApiKey(
                id=key_id,
                tenant=tenant,
                created_at=time.time(),
                name=name,
                rate_per_s=rate_per_s,
                burst=burst,
            )
            fields = {
                "id": key_id,
                "tenant": tenant,
                "created_at": repr(record.created_at),
                "name": name,
                "rate_per_s": "" if rate_per_s is None else repr(rate_per_s),
                "burst": "" if burst is None else str(burst),
                "digest": digest(key),
            }
            # HSETNX on the id claims it; a (vanishingly rare) id collision just draws again.
            if self.redis.hsetnx(keys.api_key(key_id), "id", key_id):
                pipe = self.redis.pipeline()
                pipe.hset(keys.api_key(key_id), mapping=fields)
                pipe.sadd(keys.api_keys(), key_id)
                pipe.execute()
                return NewKey(key=key, record=record)

    def authenticate(self, key: str) -> ApiKey | None:
        """The key's record if the key is valid and not revoked; None otherwise."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        raw = self.redis.hgetall(keys.api_key(key_id))
        stored = raw.get("digest", "")
        if not stored or raw.get("revoked_at") or not hmac.compare_digest(stored, digest(key)):
            return None
        return ApiKey.from_hash(raw)

    def get(self, key_id: str) -> ApiKey | None:
        raw = self.redis.hgetall(keys.api_key(key_id))
        return ApiKey.from_hash(raw) if raw.get("tenant") else None

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (revoked ones too), oldest first."""
        pipe = self.redis.pipeline()
        for key_id in self.redis.smembers(keys.api_keys()):
            pipe.hgetall(keys.api_key(key_id))
        found = [ApiKey.from_hash(raw) for raw in pipe.execute() if raw.get("tenant")]
        return sorted(
            (k for k in found if tenant is None or k.tenant == tenant),
            key=lambda k: (k.created_at, k.id),
        )

    def revoke(self, key_id: str) -> ApiKey | None:
        """Refuse the key from the next request on. Returns the record, None if unknown."""
        if not self.redis.exists(keys.api_key(key_id)):
            return None
        pipe = self.redis.pipeline()
        # The digest goes too: a revoked key can never match again, whatever reads the record.
        pipe.hsetnx(keys.api_key(key_id), "revoked_at", repr(time.time()))
        pipe.hdel(keys.api_key(key_id), "digest")
        pipe.delete(keys.rate_bucket(key_id))
        pipe.execute()
        return self.get(key_id)
