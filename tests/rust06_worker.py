"""A Rust-shaped apalis-diesel-postgres 0.6 worker, as SQL written from the contract.

The tests run the same history through it and through this client and compare the rows
both leave. Every statement follows the contract's "Lifecycle" section: the stale sweep and
its 1,000-row cap, registration with takeover recovery, the worker guard before claims,
starts and acks, the claim to Queued (``apalis.get_jobs``) and the start to Running, the
ack, the heartbeat and the release.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from ulid import ULID

SWEEP_MESSAGE = "Re-enqueued due to worker heartbeat timeout."
RELEASE_MESSAGE = "Re-enqueued because the worker released its registration."

# The recovery rule, one statement; %(...)s placeholders, {lock} is "SKIP LOCKED" or "".
_RECOVER = """
WITH candidates AS MATERIALIZED (
    SELECT id FROM apalis.jobs
     WHERE job_type = %(queue)s AND lock_by = ANY(%(workers)s)
       AND status IN ('Running', 'Queued')
     ORDER BY id LIMIT %(limit)s FOR UPDATE {lock}
)
UPDATE apalis.jobs AS j SET
    status = CASE WHEN (j.status = 'Running' OR %(charge_queued)s)
                       AND j.attempts::bigint + 1 >= j.max_attempts
                  THEN 'Killed' ELSE 'Pending' END,
    done_at = CASE WHEN (j.status = 'Running' OR %(charge_queued)s)
                        AND j.attempts::bigint + 1 >= j.max_attempts
                   THEN clock_timestamp() END,
    last_result = CASE WHEN (j.status = 'Running' OR %(charge_queued)s)
                            AND (j.attempts::bigint + 1 >= j.max_attempts OR j.last_result IS NULL)
                       THEN jsonb_build_object('Err', %(message)s::text)
                       ELSE j.last_result END,
    attempts = CASE WHEN j.status = 'Running' OR %(charge_queued)s
                    THEN LEAST(j.attempts::bigint + 1, j.max_attempts) ELSE j.attempts END,
    lock_by = NULL, lock_at = NULL
  FROM candidates WHERE j.id = candidates.id AND j.status IN ('Running', 'Queued')
"""


@dataclass
class RustClaim:
    """What a Rust worker remembers of a claimed task."""

    id: str
    attempts: int
    lock_at: datetime


class RustWorker:
    """One Rust-shaped worker registration on one queue (sync, autocommit connection)."""

    def __init__(self, url: str, queue: str, worker_id: str, threshold: float = 300.0) -> None:
        self.url, self.queue, self.worker_id, self.threshold = url, queue, worker_id, threshold
        self.token = str(ULID())

    def _conn(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.url, autocommit=True, row_factory=dict_row)

    def sweep(self) -> int:
        """The stale sweep: lock stale owners of active rows, recover their rows."""
        with self._conn() as conn, conn.transaction():
            stale = conn.execute(
                "SELECT id FROM apalis.workers w WHERE worker_type = %s "
                "AND EXTRACT(EPOCH FROM (clock_timestamp() - last_seen)) >= %s "
                "AND EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.job_type = w.worker_type "
                "AND j.lock_by = w.id AND j.status IN ('Running', 'Queued')) "
                "ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED",
                (self.queue, self.threshold),
            ).fetchall()
            if not stale:
                return 0
            cur = conn.execute(
                _RECOVER.format(lock="SKIP LOCKED"),
                {
                    "queue": self.queue,
                    "workers": [r["id"] for r in stale],
                    "limit": 1000,
                    "charge_queued": True,
                    "message": SWEEP_MESSAGE,
                },
            )
            return cur.rowcount

    def register(self) -> bool:
        """Sweep, then register (taking over a stale row); False: already registered."""
        self.sweep()
        with self._conn() as conn, conn.transaction():
            got = conn.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext(%s), hashtext(%s)) AS got",
                (self.worker_id, self.queue),
            ).fetchone()
            if not got or not got["got"]:
                return False
            row = conn.execute(
                "WITH locked AS MATERIALIZED (SELECT lease_token, last_seen FROM apalis.workers "
                "WHERE id = %(w)s AND worker_type = %(q)s FOR UPDATE), "
                "sampled AS MATERIALIZED (SELECT *, clock_timestamp() AS at FROM locked) "
                "SELECT lease_token IS NOT DISTINCT FROM %(t)s "
                "OR EXTRACT(EPOCH FROM (at - last_seen)) >= %(s)s AS allowed, "
                "lease_token IS DISTINCT FROM %(t)s "
                "OR EXTRACT(EPOCH FROM (at - last_seen)) >= %(s)s AS lost FROM sampled",
                {"w": self.worker_id, "q": self.queue, "t": self.token, "s": self.threshold},
            ).fetchone()
            if row is not None and not row["allowed"]:
                return False
            if row is not None and row["lost"]:
                conn.execute(
                    _RECOVER.format(lock=""),
                    {
                        "queue": self.queue,
                        "workers": [self.worker_id],
                        "limit": None,
                        "charge_queued": True,
                        "message": SWEEP_MESSAGE,
                    },
                )
            conn.execute(
                "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen, "
                "started_at, lease_token) VALUES (%s, %s, 'PostgresStorage', '', "
                "clock_timestamp(), clock_timestamp(), %s) ON CONFLICT (id, worker_type) DO UPDATE "
                "SET storage_name = EXCLUDED.storage_name, layers = EXCLUDED.layers, "
                "last_seen = clock_timestamp(), lease_token = EXCLUDED.lease_token",
                (self.worker_id, self.queue, self.token),
            )
        return True

    def _guard(self, conn: psycopg.Connection[dict[str, Any]]) -> bool:
        return (
            conn.execute(
                "SELECT id FROM apalis.workers WHERE id = %s AND worker_type = %s "
                "AND lease_token = %s FOR KEY SHARE",
                (self.worker_id, self.queue, self.token),
            ).fetchone()
            is not None
        )

    def claim(self, n: int) -> list[RustClaim]:
        """Claim to Queued (the crate's buffered fetch), after the worker guard."""
        with self._conn() as conn, conn.transaction():
            if not self._guard(conn):
                return []
            got = conn.execute(
                "SELECT id, attempts, lock_at FROM apalis.get_jobs(%s, %s, %s) ORDER BY id",
                (self.worker_id, self.queue, n),
            ).fetchall()
        return [RustClaim(r["id"], r["attempts"], r["lock_at"]) for r in got]

    def start(self, claim: RustClaim) -> bool:
        """Queued to Running just before the handler runs, guarded."""
        with self._conn() as conn, conn.transaction():
            if not self._guard(conn):
                return False
            cur = conn.execute(
                "UPDATE apalis.jobs SET status = 'Running' WHERE id = %s AND job_type = %s "
                "AND lock_by = %s AND lock_at = %s AND attempts = %s AND status = 'Queued'",
                (claim.id, self.queue, self.worker_id, claim.lock_at, claim.attempts),
            )
            return cur.rowcount == 1

    def ack(self, claim: RustClaim, ok: bool, value: Any) -> bool:
        """Record the outcome: Done, Failed while attempts remain, else Killed."""
        result = {"Ok": value} if ok else {"Err": value}
        with self._conn() as conn, conn.transaction():
            if not self._guard(conn):
                return False
            cur = conn.execute(
                "UPDATE apalis.jobs SET status = CASE WHEN %(ok)s THEN 'Done' "
                "WHEN attempts + 1 < max_attempts THEN 'Failed' ELSE 'Killed' END, "
                "attempts = attempts + 1, last_result = %(result)s::jsonb, "
                "done_at = clock_timestamp() "
                "WHERE id = %(id)s AND job_type = %(q)s AND lock_by = %(w)s "
                "AND lock_at = %(lock_at)s AND attempts = %(attempts)s "
                "AND status IN ('Queued', 'Running')",
                {
                    "ok": ok,
                    "result": Jsonb(result),
                    "id": claim.id,
                    "q": self.queue,
                    "w": self.worker_id,
                    "lock_at": claim.lock_at,
                    "attempts": claim.attempts,
                },
            )
            return cur.rowcount == 1

    def release(self) -> bool:
        """Hand back what is held (only Running charged); token NULL, last_seen the epoch."""
        with self._conn() as conn, conn.transaction():
            own = conn.execute(
                "SELECT id FROM apalis.workers WHERE id = %s AND worker_type = %s "
                "AND lease_token = %s FOR UPDATE",
                (self.worker_id, self.queue, self.token),
            ).fetchone()
            if own is None:
                return False
            conn.execute(
                _RECOVER.format(lock=""),
                {
                    "queue": self.queue,
                    "workers": [self.worker_id],
                    "limit": None,
                    "charge_queued": False,
                    "message": RELEASE_MESSAGE,
                },
            )
            conn.execute(
                "UPDATE apalis.workers SET lease_token = NULL, last_seen = to_timestamp(0) "
                "WHERE id = %s AND worker_type = %s AND lease_token = %s",
                (self.worker_id, self.queue, self.token),
            )
        return True
