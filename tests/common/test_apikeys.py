"""API keys against a real Redis: shown once, stored hashed, revoked at once."""

from __future__ import annotations

import pytest
import redis

from common import keys
from common.apikeys import ApiKeys, InvalidTenant, digest, key_id_of


@pytest.fixture
def store(redis_client: redis.Redis) -> ApiKeys:
    return ApiKeys(redis_client)


def _everything_stored(client: redis.Redis) -> str:
    """Every key name and value sdq keeps about API keys, as one string."""
    parts = []
    for name in client.scan_iter(match="sdq:apikey*"):
        kind = client.type(name)
        value = client.hgetall(name) if kind == "hash" else client.smembers(name)
        parts.append(f"{name} {value}")
    return "\n".join(parts)


def test_key_authenticates_as_its_tenant_and_is_stored_only_as_a_digest(
    store: ApiKeys, redis_client: redis.Redis
) -> None:
    new = store.create("acme", name="ci", rate_per_s=2.5, burst=7)

    assert key_id_of(new.key) == new.record.id
    found = store.authenticate(new.key)
    assert found is not None
    assert (found.tenant, found.name, found.rate_per_s, found.burst) == ("acme", "ci", 2.5, 7)
    stored = _everything_stored(redis_client)
    secret = new.key.rsplit("_", 1)[1]
    assert new.record.id in stored
    assert secret not in stored
    assert new.key not in stored
    assert digest(new.key) in stored


def test_wrong_malformed_and_foreign_keys_are_refused(store: ApiKeys) -> None:
    new = store.create("acme")
    key_id, secret = new.record.id, new.key.rsplit("_", 1)[1]
    other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]

    assert store.authenticate(f"sdq_{key_id}_{other_secret}") is None  # right id, wrong secret
    assert store.authenticate(f"sdq_{'0' * 12}_{secret}") is None  # unknown id
    for bad in ["", "sdq_", new.key + "x", new.key[:-1], new.key.upper(), f"Bearer {new.key}"]:
        assert store.authenticate(bad) is None, bad
    assert store.authenticate(new.key) is not None  # the control


def test_revoked_key_is_refused_from_the_next_check_on(
    store: ApiKeys, redis_client: redis.Redis
) -> None:
    new = store.create("acme")
    assert store.authenticate(new.key) is not None

    revoked = store.revoke(new.record.id)

    assert revoked is not None
    assert revoked.revoked_at is not None
    assert store.authenticate(new.key) is None
    assert "digest" not in redis_client.hgetall(keys.api_key(new.record.id))
    assert store.revoke("f" * 12) is None


def test_list_shows_ids_and_status_never_keys(store: ApiKeys) -> None:
    first = store.create("lister-a")
    second = store.create("lister-a")
    store.create("lister-b")
    store.revoke(second.record.id)

    listed = store.list("lister-a")

    assert [k.id for k in listed] == [first.record.id, second.record.id]
    assert [k.active for k in listed] == [True, False]
    assert {k.tenant for k in store.list()} >= {"lister-a", "lister-b"}
    assert first.key not in repr(listed)


@pytest.mark.parametrize("tenant", ["", "a:b", "a b", "-x", "x" * 64, "é"])
def test_tenant_names_are_safe_in_redis_keys(store: ApiKeys, tenant: str) -> None:
    with pytest.raises(InvalidTenant):
        store.create(tenant)
