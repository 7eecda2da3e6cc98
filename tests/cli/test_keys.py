"""``sdq keys``: the key is printed once, alone on its line; list never shows it; revoke
refuses it from the next request on (against the real API process)."""

from __future__ import annotations

import subprocess

import httpx
import pytest
import redis

from cli.keys import parse_rate
from cli.services import Service, sdq_command
from common import keys


def sdq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sdq_command(*args), env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("text", "per_s"), [("10", 10.0), ("2.5/s", 2.5), ("600/m", 10.0), ("3600 / h", 1.0)]
)
def test_rates_read_per_second_minute_or_hour(text: str, per_s: float) -> None:
    assert parse_rate(text) == per_s


def test_create_list_revoke(
    sdq_env: dict[str, str], api_server: Service, redis_client: redis.Redis
) -> None:
    created = sdq(sdq_env, "keys", "create", "--tenant", "cli-team", "--rate", "600/m")
    assert created.returncode == 0, created.stderr
    (key,) = created.stdout.splitlines()  # the key, alone
    key_id = key.split("_")[1]
    assert redis_client.hget(keys.api_key(key_id), "rate_per_s") == "10.0"
    headers = {"Authorization": f"Bearer {key}"}
    url = api_server.extra["url"]
    assert httpx.get(f"{url}/v1/jobs", headers=headers, timeout=10).status_code == 200

    listed = sdq(sdq_env, "keys", "list", "--tenant", "cli-team")
    assert listed.returncode == 0
    assert key_id in listed.stdout
    assert "active" in listed.stdout
    assert key.split("_")[2] not in listed.stdout + listed.stderr

    revoked = sdq(sdq_env, "keys", "revoke", key_id)
    assert revoked.returncode == 0
    assert httpx.get(f"{url}/v1/jobs", headers=headers, timeout=10).status_code == 401
    assert "revoked" in sdq(sdq_env, "keys", "list", "--tenant", "cli-team").stdout
    assert sdq(sdq_env, "keys", "revoke", "0" * 12).returncode == 1


def test_bad_tenant_and_rate_are_refused(sdq_env: dict[str, str], redis_server: Service) -> None:
    assert sdq(sdq_env, "keys", "create", "--tenant", "a:b").returncode == 2
    assert sdq(sdq_env, "keys", "create", "--tenant", "ok", "--rate", "fast").returncode == 2


def test_production_settings_refuse_to_start_with_auth_off(sdq_env: dict[str, str]) -> None:
    env = {**sdq_env, "SDQ_ENV": "production", "SDQ_AUTH_ENABLED": "false"}
    refused = sdq(env, "keys", "list")
    assert refused.returncode != 0
    assert "SDQ_AUTH_ENABLED is false" in refused.stderr
    assert "SDQ_S3_SECRET_ACCESS_KEY is a well-known default" in refused.stderr
    assert sdq_env["SDQ_S3_SECRET_ACCESS_KEY"] not in refused.stderr
