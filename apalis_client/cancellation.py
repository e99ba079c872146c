"""Operator cancellation: the NOTIFY channel, its payload, and the stored message (I/O-free).

``cancel_task`` (queries/cancel.sql) marks an unfinished task Killed with
``{"Err": "cancelled by operator"}`` and, when a worker held it, sends
``pg_notify('apalis_client::cancel', payload)`` at commit, the payload being
``{"id": "<task id>", "job_type": "<queue>", "worker_id": "<lock_by>", "attempts": N}``
(``attempts`` as claimed, so a worker that has since re-claimed the id ignores it).
Workers that miss the NOTIFY find the task with ``lost_claims`` when they poll.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["CANCEL_CHANNEL", "CANCEL_MESSAGE", "CancelRequest", "parse_cancel_payload"]

#: Ours, not the Rust crate's: Rust workers never LISTEN on it.
CANCEL_CHANNEL = "apalis_client::cancel"
#: The ``{"Err": ...}`` text a cancelled task gets.
CANCEL_MESSAGE = "cancelled by operator"


@dataclass(frozen=True)
class CancelRequest:
    """A parsed cancel notification: which run of which task, held by which worker."""

    id: str
    job_type: str
    worker_id: str
    attempts: int

    def is_for(self, worker_id: str, queues: frozenset[str] | set[str]) -> bool:
        """Whether a worker with this id serving these queues should act on it."""
        return self.worker_id == worker_id and self.job_type in queues


def parse_cancel_payload(payload: str) -> CancelRequest | None:
    """Parse a ``apalis_client::cancel`` payload; None for anything malformed (never raises)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    task_id, job_type, worker_id = data.get("id"), data.get("job_type"), data.get("worker_id")
    attempts = data.get("attempts")
    if not (isinstance(task_id, str) and isinstance(job_type, str) and isinstance(worker_id, str)):
        return None
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        return None
    return CancelRequest(task_id, job_type, worker_id, attempts)
