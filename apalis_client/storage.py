"""Typed producer handles for one queue: ``PostgresStorage[Args]`` and its async twin.

``AsyncPostgresStorage`` is written in ``storage_async``; ``PostgresStorage`` is generated
from it (``storage_sync``), so the two cannot drift.
"""

from __future__ import annotations

from apalis_client.storage_async import AsyncPostgresStorage
from apalis_client.storage_logic import QueueConfig, queue_name
from apalis_client.storage_sync import PostgresStorage

__all__ = ["AsyncPostgresStorage", "PostgresStorage", "QueueConfig", "queue_name"]
