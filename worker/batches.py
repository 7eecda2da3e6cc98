"""The worker's part in batches: after each delivery, count the job towards its batch.

Every way a job ends passes through a delivery of its task (finished, failed, interrupted by a
cancel, exhausted, or dropped because it was canceled or expired while queued), so the worker
that handles the batch's last delivery writes its results manifest. Reads of the batch in the
API finish any batch this misses (a worker that died between the two steps).
"""

from __future__ import annotations

import logging

from common.batches import BatchStore
from common.jobstore import JobStore
from common.storage import Storage

log = logging.getLogger(__name__)


def settle(store: JobStore, storage: Storage, job_id: str, ttl_s: int) -> None:
    """Never raises: the job's own outcome is already recorded, whatever happens here."""
    try:
        if BatchStore(store, storage, ttl_s=ttl_s).settle(job_id):
            log.info("job %s was the last of its batch; manifest written", job_id)
    except Exception:
        log.warning("job %s: counting it towards its batch failed", job_id, exc_info=True)
