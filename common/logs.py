"""Structured logs for the API, the workers and the CLI: one JSON object per line.

Every line carries the job id and tenant of the request or task it belongs to (see
:func:`bind` and :func:`log_context`). Nothing secret reaches the output: API keys, bearer
tokens, S3 signatures and credentials, and the value of every ``SecretStr`` setting are
masked in the formatter, whoever wrote the message. Prompts are user content: code logs
:func:`prompt_summary` of them, which is the full text only with ``SDQ_LOG_PROMPTS=true``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from common.settings import Settings

REDACTED = "[redacted]"

# A per-request (or per-task) dict, mutated in place by bind(): code that runs in a copy of
# the context (a threadpool, a sync dependency) still adds to the request's own fields.
_context: ContextVar[dict[str, Any] | None] = ContextVar("sdq_log_context", default=None)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # sdq API keys keep their public id: sdq_<id>_<secret>
    (re.compile(r"\b(sdq_[0-9a-f]{12})_[A-Za-z0-9_-]+"), rf"\1_{REDACTED}"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), rf"\1{REDACTED}"),
    # presigned URLs (SigV4 and V2) and SigV4 Authorization headers
    (
        re.compile(r"(?i)\b(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"',;]+"),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)(?<![\w-])(Signature=|Credential=)[^&\s\"',;]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b(AWSAccessKeyId=)[^&\s\"',;]+"), rf"\1{REDACTED}"),
]

# Attributes every LogRecord has; anything else on a record came from `extra=` (uvicorn's
# `color_message` is its message again, with terminal colours).
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class Redactor:
    """Masks secrets in text: known secret values, and keys/signatures by their shape."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        values = (getattr(settings, name) for name in type(settings).model_fields)
        return cls(v.get_secret_value() for v in values if isinstance(v, SecretStr))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def bind(**fields: Any) -> None:
    """Add fields (job_id, tenant, ...) to every log line of the current request or task."""
    context = _context.get()
    if context is None:
        context = {}
        _context.set(context)
    context.update({k: v for k, v in fields.items() if v is not None})


@contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """A fresh set of context fields for one request or task."""
    context = {k: v for k, v in fields.items() if v is not None}
    token = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get() or {})


def prompt_summary(prompts: list[str], settings: Settings) -> str | list[str]:
    """What a log line may say about prompts: their size, or the text if the operator asked."""
    if settings.log_prompts:
        return prompts
    return f"{len(prompts)} prompt(s), {sum(len(p) for p in prompts)} chars"


def _clean(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_clean(v, redact) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v, redact) for k, v in value.items()}
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", <context>, <extra>, "exc"}`` on one line."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_context.get() or {})
        entry.update(
            (k, v)
            for k, v in record.__dict__.items()
            if k not in _RECORD_ATTRS and not k.startswith("_")
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(_clean(entry, self.redact), ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with the context fields appended as key=value (for people)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context.get() or {}
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return self.redact(line)


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """Send every logger's records, redacted and formatted, to stderr (or ``stream``)."""
    redactor = Redactor.from_settings(settings)
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    handler.setFormatter(formatter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # httpx logs every URL it fetches at INFO; they are redacted anyway, but they are noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
