"""Fault injection for reliability tests and chaos runs (off unless SDQ_FAULT_INJECTION=true).

A job whose metadata carries ``"sdq-fault": "kill@K"`` SIGKILLs the process running it at step
K on every attempt (a poison job: think OOM or a segfault); ``"kill-once@K"`` only on its first
attempt (a worker that died once).
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from common.schemas import JobRequest

log = logging.getLogger(__name__)

METADATA_KEY = "sdq-fault"


@dataclass(frozen=True)
class Fault:
    kill_at_step: int
    every_attempt: bool

    def maybe_strike(self, step: int, attempt: int) -> None:
        if step == self.kill_at_step and (self.every_attempt or attempt == 1):
            log.warning("fault injection: SIGKILL at step %d of attempt %d", step, attempt)
            os.kill(os.getpid(), signal.SIGKILL)


def fault_for(request: JobRequest, enabled: bool) -> Fault | None:
    spec = request.metadata.get(METADATA_KEY) if enabled else None
    if not spec:
        return None
    kind, _, step = spec.partition("@")
    if kind not in {"kill", "kill-once"} or not step.isdigit():
        log.warning("ignoring unknown fault %r", spec)
        return None
    return Fault(kill_at_step=int(step), every_attempt=kind == "kill")
