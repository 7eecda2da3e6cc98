"""An OpenAPI-driven fuzzer (schemathesis) against the app's own ``/openapi.json``.

Every operation the schema lists — whoever added it — gets schema-conforming and
schema-violating requests, with a valid API key (schemathesis drops it from some cases to
check that those are refused). No answer may be a 5xx (but the documented 504 of a
synchronous route whose jobs no worker serves here), no exception may escape the app (the
in-process transport re-raises them), every error has the JSON error shape, and a rejected
request enqueues nothing.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.python import asgi

from api.main import create_app
from common import keys
from common.settings import Settings

QUEUE = f"sdq.fuzz-{uuid.uuid4().hex[:8]}"  # no worker consumes it: enqueued work stays visible
EXAMPLES = 15  # per operation and mode: a few hundred cases in all, well under a minute


@pytest.fixture(scope="module")
def schema(settings: Settings, storage) -> Iterator[schemathesis.BaseSchema]:
    # Short waits: a fuzzed `Prefer: wait=N`, or a synchronous route waiting for images no
    # worker makes, must not hold the run.
    waits = {"max_wait_s": 0.2, "sync_timeout_s": 0.2}
    update = {"queue": QUEUE, **{k: v for k, v in waits.items() if k in Settings.model_fields}}
    app = create_app(settings.model_copy(update=update))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    asgi.shutdown_lifespans()  # schemathesis ran the app's lifespan; end it with the module


def _queued(client: redis.Redis) -> tuple[int, int]:
    return client.llen(QUEUE), client.zcard(keys.pending(QUEUE))


def _documented_timeout(response: schemathesis.Response) -> bool:
    """A synchronous route's 504: the jobs were accepted and go on (no worker serves QUEUE)."""
    if response.status_code != 504:
        return False
    error = response.json()["error"]
    return error["code"] == "timeout" and bool(error["details"]["job_ids"])


def _has_inputs(operation: schemathesis.APIOperation) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


def test_fuzz_the_openapi_schema(
    schema: schemathesis.BaseSchema,
    auth_headers: dict[str, str],
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    statuses: Counter[int] = Counter()
    per_operation: Counter[str] = Counter()
    enqueued = 0

    def exercise(case: schemathesis.Case) -> None:
        nonlocal enqueued
        before = _queued(redis_client)
        response = case.call(headers=auth_headers)
        after = _queued(redis_client)
        statuses[response.status_code] += 1
        per_operation[case.operation.label] += 1
        assert response.status_code < 500 or _documented_timeout(response), (
            f"{case.operation.label} answered {response.status_code}: {response.text[:300]}"
        )
        if 400 <= response.status_code < 500:
            assert after == before, f"{case.operation.label} {response.status_code} enqueued"
            if "json" in response.headers.get("content-type", ""):
                error = response.json()["error"]
                assert error["code"]
                assert error["message"]
        else:
            enqueued += after[0] - before[0]

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if _has_inputs(operation):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            run = hypothesis_settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same cases on every run: CI stays reproducible
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(given(case=operation.as_strategy(generation_mode=mode))(exercise))
            run()

    total = sum(statuses.values())
    with capsys.disabled():
        print(
            f"\nfuzz: {total} cases over {len(per_operation)} operations; "
            f"statuses {dict(sorted(statuses.items()))}; {enqueued} jobs enqueued by accepted "
            "requests, none by rejected ones"
        )
    assert total >= 200
    assert not any(status >= 500 and status != 504 for status in statuses)
    assert any(400 <= status < 500 for status in statuses)  # the fuzzer did reach validation
