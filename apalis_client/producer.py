"""Push tasks on a connection you hold (the transactional outbox): thin sync and async shells.

The logic lives in :mod:`apalis_client.batch` and :mod:`apalis_client.producer_logic`;
the shells only run its plan on a connection. The async ones are written in
``producer_async``; the sync ones are generated from them (``producer_sync``).

Every push is one INSERT for the whole batch. Inside the caller's transaction the INSERT
runs in a savepoint sent in the same round trip (a single task's INSERT as a statement the
session prepared once), so a failed push rolls back only itself and the caller's transaction
stays usable; the caller commits or rolls back. On an idle non-
autocommit connection the push opens the transaction, as any statement would, and, if it
fails, rolls back that transaction, which holds nothing but the push. On an idle autocommit
connection the batch commits on its own, all or nothing. NOTIFY reaches workers at commit.
"""

from __future__ import annotations

from apalis_client.producer_async import (
    push_batch_async,
    push_many_with_conn_async,
    push_task_with_conn_async,
    push_with_conn_async,
)
from apalis_client.producer_sync import (
    push_batch,
    push_many_with_conn,
    push_task_with_conn,
    push_with_conn,
)

__all__ = [
    "push_batch",
    "push_batch_async",
    "push_many_with_conn",
    "push_many_with_conn_async",
    "push_task_with_conn",
    "push_task_with_conn_async",
    "push_with_conn",
    "push_with_conn_async",
]
