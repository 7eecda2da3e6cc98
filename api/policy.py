"""Content policy on input: a term list, and a hook for an external checker.

Only positive prompts are checked: negative prompts name what to keep *out* of an image, and
routinely contain the very words a policy refuses. Output safety stays the safety checker's
job (worker side). A refused prompt is a 400 ``content_policy`` and nothing is enqueued.

The hook (``SDQ_CONTENT_POLICY_HOOK=package.module:function``) is called as
``function(prompts: list[str], tenant: str) -> str | None`` and returns a reason to refuse,
or None to accept; it is the place to call an external content-safety service. It runs in a
worker thread; if it raises, the request is refused with 503 (the policy fails closed).
"""

from __future__ import annotations

import importlib
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from api.errors import ApiError
from common.settings import Settings

log = logging.getLogger(__name__)

Hook = Callable[[list[str], str], str | None]

RETRY_AFTER_POLICY_DOWN_S = 5


def _normalise(text: str) -> str:
    # NFKC folds look-alikes (full-width letters, ligatures); casefold ignores case.
    return unicodedata.normalize("NFKC", text).casefold()


def load_hook(path: str) -> Hook:
    """``'package.module:function'`` → the function (fails at start-up, not per request)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"SDQ_CONTENT_POLICY_HOOK must read 'module:function', not {path!r}")
    hook = getattr(importlib.import_module(module_name), attr)
    if not callable(hook):
        raise TypeError(f"SDQ_CONTENT_POLICY_HOOK {path!r} is not callable")
    return hook


@dataclass(frozen=True)
class Refusal:
    prompt_index: int | None
    reason: str


class ContentPolicy:
    """Decides whether prompts may be generated at all."""

    def __init__(self, terms: tuple[str, ...] = (), hook: Hook | None = None) -> None:
        words = [_normalise(t) for t in terms if t.strip()]
        # Whole words or phrases, so a term does not refuse every word that contains it.
        self._pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)")
            if words
            else None
        )
        self._hook = hook

    @classmethod
    def from_settings(cls, settings: Settings) -> ContentPolicy:
        hook = load_hook(settings.content_policy_hook) if settings.content_policy_hook else None
        return cls(settings.content_policy_terms, hook)

    def check(self, prompts: list[str], tenant: str) -> Refusal | None:
        if self._pattern is not None:
            for index, prompt in enumerate(prompts):
                if self._pattern.search(_normalise(prompt)):
                    return Refusal(index, "it contains a term the content policy refuses")
        if self._hook is not None:
            reason = self._hook(list(prompts), tenant)
            if reason:
                return Refusal(None, str(reason))
        return None

    def enforce(self, prompts: list[str], tenant: str) -> None:
        """Raise the API's 400 ``content_policy`` (or 503 if the hook fails)."""
        try:
            refusal = self.check(prompts, tenant)
        except Exception as exc:
            log.exception("content policy hook failed")
            raise ApiError(
                503,
                "content_policy_unavailable",
                "the content policy check is unavailable; retry later",
                headers={"Retry-After": str(RETRY_AFTER_POLICY_DOWN_S)},
            ) from exc
        if refusal is None:
            return
        where = f"prompt {refusal.prompt_index}" if refusal.prompt_index is not None else "request"
        log.info("content policy refused the %s", where)
        raise ApiError(
            400,
            "content_policy",
            f"the {where} was refused by the content policy: {refusal.reason}",
            details={"prompt_index": refusal.prompt_index},
        )
