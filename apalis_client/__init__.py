"""apalis-client: a typed Python client for the apalis job queue on PostgreSQL."""

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
    SchemaError,
    SchemaMissing,
    StaleAcknowledgement,
    WorkerNotRegistered,
)
from apalis_client.migrate import (
    MigrationReport,
    SchemaReport,
    migrate,
    migrate_async,
    verify_schema,
    verify_schema_async,
)
from apalis_client.producer import push_many_with_conn, push_task_with_conn, push_with_conn
from apalis_client.producer_async import (
    push_many_with_conn_async,
    push_task_with_conn_async,
    push_with_conn_async,
)
from apalis_client.storage import PostgresStorage
from apalis_client.storage_async import AsyncPostgresStorage
from apalis_client.task import Task, TaskId
from apalis_client.worker import Worker, WorkerStats
from apalis_client.worker_logic import Outcome
from apalis_client.worker_ops import Lease

__version__ = "0.1.0"

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
    "PostgresStorage",
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
