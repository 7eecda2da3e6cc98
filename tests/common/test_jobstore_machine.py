"""A Hypothesis state machine over the job store: whatever happens, in whatever order, no
transition leaves a terminal state and every terminal transition emits exactly one event —
and, for a job with a webhook, exactly one webhook event in the outbox (and at most one
job.started, however often the job was started)."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from common import keys
from common.jobstore import JobStore
from common.schemas import TERMINAL_STATUSES, JobCreate, JobError, JobStatus, WebhookSpec

TERMINAL = sorted(TERMINAL_STATUSES)
WEBHOOK = WebhookSpec(
    url="https://hooks.example/m", events=["job.started", *[f"job.{s}" for s in TERMINAL]]
).for_job()


class JobStoreMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")
    url = ""

    @initialize()
    def connect(self) -> None:
        self.store = JobStore.from_url(self.url, job_ttl_s=600, idempotency_ttl_s=600)
        self.tokens: dict[str, str] = {}
        self.ended: dict[str, JobStatus] = {}  # first terminal status seen per job

    @rule(target=jobs, with_deadline=st.booleans(), with_webhook=st.booleans())
    def create(self, with_deadline: bool, with_webhook: bool) -> str:
        deadline = time.time() - 1 if with_deadline else None
        job_id, _ = self.store.create(
            JobCreate(prompt="m").normalised(),
            tenant="t-machine",
            queue="q-m",
            deadline=deadline,
            webhook=WEBHOOK if with_webhook else None,
        )
        return job_id

    @rule(job=jobs, attempts=st.integers(1, 3))
    def start(self, job: str, attempts: int) -> None:
        outcome = self.store.start(job, worker="w", lease_ttl_s=30, max_attempts=attempts)
        if outcome.verdict == "started":
            self.tokens[job] = outcome.token

    @rule(job=jobs)
    def worker_dies(self, job: str) -> None:
        self.store.redis.delete(keys.job_lease(job))

    @rule(job=jobs, step=st.integers(0, 50))
    def progress(self, job: str, step: int) -> None:
        self.store.progress(job, step, 50)

    @rule(job=jobs)
    def cancel(self, job: str) -> None:
        self.store.cancel(job)

    @rule(job=jobs, status=st.sampled_from(TERMINAL), stale=st.booleans())
    def finish(self, job: str, status: JobStatus, stale: bool) -> None:
        token = "stale-token" if stale else self.tokens.get(job, "none")
        error = JobError(code="x", message="y") if status is JobStatus.FAILED else None
        self.store.finish(job, status, token=token, error=error)

    @rule(job=jobs, attempts=st.integers(1, 3))
    def reap(self, job: str, attempts: int) -> None:
        self.store.requeue_orphan(job, max_attempts=attempts)
        self.store.expire_overdue()

    @rule(job=jobs, target_status=st.sampled_from(list(JobStatus)))
    def arbitrary_transition(self, job: str, target_status: JobStatus) -> None:
        self.store.transition(job, target_status, allowed_from=tuple(JobStatus))

    @invariant()
    def terminal_is_forever_and_announced_once(self) -> None:
        for job_id, raw_status in self._statuses().items():
            status = JobStatus(raw_status)
            if job_id in self.ended:
                assert status is self.ended[job_id], (job_id, self.ended[job_id], status)
            elif status.is_terminal:
                self.ended[job_id] = status
            events = [
                e.fields["status"]
                for e in self.store.events(job_id)
                if e.fields["type"] == "status"
            ]
            terminal_events = [e for e in events if JobStatus(e).is_terminal]
            assert len(terminal_events) == (1 if status.is_terminal else 0), (job_id, events)
            assert events[-1] == status.value
            started = bool(self.store.redis.hget(keys.job(job_id), "started_at"))
            self._check_webhook_events(job_id, status, started=started)

    def _check_webhook_events(self, job_id: str, status: JobStatus, *, started: bool) -> None:
        if not self.store.redis.hget(keys.job(job_id), "webhook"):
            return
        outbox = self.store.redis.xrange(keys.webhook_outbox())
        sent = [fields["event"] for _, fields in outbox if fields["subject"] == job_id]
        expected = ["job.started"] if started else []
        if status.is_terminal:
            expected.append(f"job.{status.value}")
        assert sorted(sent) == sorted(expected), (job_id, sent)

    def _statuses(self) -> dict[str, str]:
        ids = self.store.redis.zrange(keys.tenant_jobs("t-machine"), 0, -1)
        return {job_id: self.store.redis.hget(keys.job(job_id), "status") for job_id in ids}

    def teardown(self) -> None:
        for job_id in self.store.redis.zrange(keys.tenant_jobs("t-machine"), 0, -1):
            self.store.discard(job_id, tenant="t-machine")
        self.store.redis.delete(keys.webhook_outbox())
        self.store.redis.close()


def test_job_store_state_machine(redis_server) -> None:
    # A database of its own: the reapers of the session's workers (db 0) would otherwise expire
    # and requeue the machine's jobs behind its back, between its reads.
    JobStoreMachine.url = redis_server.extra["url"].removesuffix("/0") + "/4"
    run_state_machine_as_test(
        JobStoreMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
