"""Session fixtures: a real redis-server, a real rclone S3 server, the tiny model, a real worker
process and a real API process. Started once; tests use their own jobs and never flush.

Auth is on, as in production: `client` sends the session's API key (tenant "tests"); an
in-process app needs it too: ``TestClient(create_app(settings...), headers=auth_headers)``.
For an app on another Redis, ``tests.helpers.create_key_headers(redis_client)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from cli.services import DEV_S3_KEY, DEV_S3_SECRET, Service, start_redis, start_s3
from common.settings import Settings
from common.storage import Storage
from tests.helpers import child_env, create_key_headers, start_api, start_worker


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sdq")


@pytest.fixture(scope="session")
def logs(root: Path) -> Path:
    path = root / "logs"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def redis_server(root: Path) -> Iterator[Service]:
    service = start_redis(root / "redis")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def s3_server(root: Path) -> Iterator[Service]:
    service = start_s3(root / "s3")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def model_cache(root: Path) -> Path:
    """The tiny model, built once for the session (workers find it in this cache)."""
    from worker.tiny import ensure_tiny_model

    cache = root / "cache"
    ensure_tiny_model(cache)
    return cache


@pytest.fixture(scope="session")
def sdq_env(redis_server: Service, s3_server: Service, model_cache: Path) -> dict[str, str]:
    """Environment of sdq processes under test (tight intervals so tests run fast)."""
    return child_env(
        SDQ_REDIS_URL=redis_server.extra["url"],
        SDQ_S3_ENDPOINT_URL=s3_server.extra["url"],
        SDQ_S3_ACCESS_KEY_ID=DEV_S3_KEY,
        SDQ_S3_SECRET_ACCESS_KEY=DEV_S3_SECRET,
        SDQ_S3_BUCKET="sdq-test",
        SDQ_S3_CREATE_BUCKET="true",
        SDQ_MODEL="tiny",
        SDQ_CACHE_DIR=str(model_cache),
        SDQ_PROGRESS_INTERVAL_S="0.05",
        SDQ_HEARTBEAT_INTERVAL_S="1",
        SDQ_LEASE_TTL_S="5",
        SDQ_LOG_LEVEL="INFO",
        # dev: the S3 secret above is the well-known development one, which production refuses.
        SDQ_ENV="dev",
        SDQ_AUTH_ENABLED="true",
        # Tests poll fast; the rate limit has its own tests with keys of their own rates.
        SDQ_RATE_LIMIT_PER_S="1000",
        SDQ_RATE_LIMIT_BURST="1000",
    )


@pytest.fixture(scope="session")
def settings(sdq_env: dict[str, str]) -> Settings:
    """The same configuration, for in-process clients and apps."""
    values = {k.removeprefix("SDQ_").lower(): v for k, v in sdq_env.items() if k.startswith("SDQ_")}
    return Settings(**values)


@pytest.fixture(scope="session")
def storage(settings: Settings) -> Storage:
    store = Storage(settings)
    store.ensure_bucket()
    return store


@pytest.fixture(scope="session")
def redis_client(redis_server: Service) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.extra["url"], decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker(sdq_env: dict[str, str], logs: Path, redis_client: redis.Redis, storage: Storage):
    """One real GPU-style worker process (prefork, concurrency 1) on the tiny model."""
    service = start_worker(sdq_env, "w1@sdq-test", logs, redis_client)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def api_server(sdq_env: dict[str, str], logs: Path, storage: Storage) -> Iterator[Service]:
    service = start_api(sdq_env, logs)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def auth_headers(redis_client: redis.Redis) -> dict[str, str]:
    """``Authorization`` of an API key of tenant "tests" in the session's Redis."""
    return create_key_headers(redis_client, tenant="tests")


@pytest.fixture
def client(
    api_server: Service, worker: Service, auth_headers: dict[str, str]
) -> Iterator[httpx.Client]:
    """HTTP client of the real API (sending the session's API key), with a worker serving its
    queue."""
    with httpx.Client(base_url=api_server.extra["url"], timeout=30, headers=auth_headers) as http:
        yield http
