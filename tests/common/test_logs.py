"""Structured logs: one JSON object a line, with job id and tenant, and nothing secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from common.logs import bind, configure_logging, log_context, prompt_summary
from common.settings import Settings

KEY = "sdq_0123456789ab_" + "S" * 43
SECRET = "s3-secret-value-Xy9"
PRESIGNED = (
    "http://127.0.0.1:9000/sdq/jobs/1/0.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=" + "ab12" * 16
)
SIGV4_HEADER = (
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "cd34" * 16
)


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging(Settings(env="dev", s3_secret_access_key=SECRET), stream)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_secrets_keys_and_signatures_never_reach_the_output(capture: io.StringIO) -> None:
    log = logging.getLogger("sdq.test")
    log.warning("key %s secret %s url %s", KEY, SECRET, PRESIGNED)
    log.info("Authorization: Bearer %s / %s", KEY, SIGV4_HEADER, extra={"url": PRESIGNED})
    try:
        raise RuntimeError(f"failed with {SECRET} and {KEY}")
    except RuntimeError:
        log.exception("boom")

    out = capture.getvalue()
    for secret in [KEY.rsplit("_", 1)[1], SECRET, "ab12" * 16, "cd34" * 16, "AKIDEXAMPLE"]:
        assert secret not in out
    assert "sdq_0123456789ab_[redacted]" in out  # the public id stays, to trace a key
    lines = _lines(capture)
    assert len(lines) == 3
    assert "X-Amz-Date=20240101T000000Z" in lines[0]["msg"]  # the rest of the URL stays
    assert "RuntimeError" in lines[2]["exc"]


def test_lines_carry_the_job_and_tenant_of_their_context(capture: io.StringIO) -> None:
    log = logging.getLogger("sdq.test")
    with log_context(job_id="j1"):
        bind(tenant="acme")
        log.info("inside")
    log.info("outside")

    inside, outside = _lines(capture)
    assert (inside["job_id"], inside["tenant"], inside["msg"]) == ("j1", "acme", "inside")
    assert inside["level"] == "INFO"
    assert inside["logger"] == "sdq.test"
    assert inside["ts"]
    assert "job_id" not in outside
    assert "tenant" not in outside


def test_prompts_are_summarised_unless_prompt_logging_is_on() -> None:
    prompts = ["a secret project codename", "two"]
    quiet = prompt_summary(prompts, Settings(env="dev"))
    assert "codename" not in str(quiet)
    assert quiet == "2 prompt(s), 28 chars"
    assert prompt_summary(prompts, Settings(env="dev", log_prompts=True)) == prompts
