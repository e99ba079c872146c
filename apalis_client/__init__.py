"""apalis-client: a typed Python client for the apalis job queue on PostgreSQL."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apalis_client.codec import Codec, JsonCodec
    from apalis_client.config import Config, WorkerConfig
    from apalis_client.errors import (
        AlreadyRegistered,
        ApalisError,
        ConnectionFailed,
        DatabaseError,
        DuplicateTaskId,
        IdempotencyConflict,
        InvalidArgument,
        MigrationChecksumMismatch,
        PermissionDenied,
        SchemaError,
        SchemaMissing,
        StaleAcknowledgement,
        WorkerNotRegistered,
    )
    from apalis_client.migrate import MigrationReport, SchemaReport, migrate, verify_schema
    from apalis_client.migrate_async import migrate_async, verify_schema_async
    from apalis_client.producer import push_many_with_conn, push_task_with_conn, push_with_conn
    from apalis_client.producer_async import (
        push_many_with_conn_async,
        push_task_with_conn_async,
        push_with_conn_async,
    )
    from apalis_client.route import Route
    from apalis_client.storage import PostgresStorage
    from apalis_client.storage_async import AsyncPostgresStorage
    from apalis_client.task import Task, TaskId
    from apalis_client.worker import Worker, WorkerStats
    from apalis_client.worker_logic import Outcome
    from apalis_client.worker_ops import Lease

__version__ = "0.1.0"

# Imported on first use (PEP 562), so `import apalis_client` (and `apalis-client --help`)
# does not load psycopg, pydantic and the worker before anything needs them.
_EXPORTS: dict[str, str] = {
    "Codec": "apalis_client.codec",
    "JsonCodec": "apalis_client.codec",
    "Config": "apalis_client.config",
    "WorkerConfig": "apalis_client.config",
    "AlreadyRegistered": "apalis_client.errors",
    "ApalisError": "apalis_client.errors",
    "ConnectionFailed": "apalis_client.errors",
    "DatabaseError": "apalis_client.errors",
    "DuplicateTaskId": "apalis_client.errors",
    "IdempotencyConflict": "apalis_client.errors",
    "InvalidArgument": "apalis_client.errors",
    "MigrationChecksumMismatch": "apalis_client.errors",
    "PermissionDenied": "apalis_client.errors",
    "SchemaError": "apalis_client.errors",
    "SchemaMissing": "apalis_client.errors",
    "StaleAcknowledgement": "apalis_client.errors",
    "WorkerNotRegistered": "apalis_client.errors",
    "MigrationReport": "apalis_client.migrate",
    "SchemaReport": "apalis_client.migrate",
    "migrate": "apalis_client.migrate",
    "migrate_async": "apalis_client.migrate_async",
    "verify_schema": "apalis_client.migrate",
    "verify_schema_async": "apalis_client.migrate_async",
    "push_many_with_conn": "apalis_client.producer",
    "push_many_with_conn_async": "apalis_client.producer_async",
    "push_task_with_conn": "apalis_client.producer",
    "push_task_with_conn_async": "apalis_client.producer_async",
    "push_with_conn": "apalis_client.producer",
    "push_with_conn_async": "apalis_client.producer_async",
    "AsyncPostgresStorage": "apalis_client.storage_async",
    "PostgresStorage": "apalis_client.storage",
    "Route": "apalis_client.route",
    "Task": "apalis_client.task",
    "TaskId": "apalis_client.task",
    "Worker": "apalis_client.worker",
    "WorkerStats": "apalis_client.worker",
    "Outcome": "apalis_client.worker_logic",
    "Lease": "apalis_client.worker_ops",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


class _Package(types.ModuleType):
    """The package module: a submodule import never shadows an exported name.

    Importing ``apalis_client.migrate`` (the module) sets the package's ``migrate``
    attribute; ``apalis_client.migrate`` must stay the function, as it was when this
    package imported everything eagerly.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "AlreadyRegistered",
    "ApalisError",
    "AsyncPostgresStorage",
    "Codec",
    "Config",
    "ConnectionFailed",
    "DatabaseError",
    "DuplicateTaskId",
    "IdempotencyConflict",
    "InvalidArgument",
    "JsonCodec",
    "Lease",
    "MigrationChecksumMismatch",
    "MigrationReport",
    "Outcome",
    "PermissionDenied",
    "PostgresStorage",
    "Route",
    "SchemaError",
    "SchemaMissing",
    "SchemaReport",
    "StaleAcknowledgement",
    "Task",
    "TaskId",
    "Worker",
    "WorkerConfig",
    "WorkerNotRegistered",
    "WorkerStats",
    "__version__",
    "migrate",
    "migrate_async",
    "push_many_with_conn",
    "push_many_with_conn_async",
    "push_task_with_conn",
    "push_task_with_conn_async",
    "push_with_conn",
    "push_with_conn_async",
    "verify_schema",
    "verify_schema_async",
]
