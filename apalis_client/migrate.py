"""Apply schema/ migrations, reconcile drifted objects, and verify the generation-14 shape.

The logic is in ``migrate_logic``; ``migrate_async`` runs it on an ``AsyncConnection`` and
``migrate_sync``, generated from it, on a ``Connection``.
"""

from __future__ import annotations

from apalis_client.migrate_async import migrate_async, verify_schema_async
from apalis_client.migrate_logic import MigrationFile, MigrationReport, SchemaReport
from apalis_client.migrate_sync import migrate, verify_schema

__all__ = [
    "MigrationFile",
    "MigrationReport",
    "SchemaReport",
    "migrate",
    "migrate_async",
    "verify_schema",
    "verify_schema_async",
]
