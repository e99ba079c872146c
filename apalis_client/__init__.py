"""apalis-client: a typed Python client for the apalis job queue on PostgreSQL."""

from apalis_client.errors import (
    AlreadyRegistered,
    ApalisError,
    ConnectionFailed,
    DatabaseError,
    InvalidArgument,
    MigrationChecksumMismatch,
    SchemaError,
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
from apalis_client.worker import Worker, WorkerConfig, WorkerStats
from apalis_client.worker_logic import Outcome
from apalis_client.worker_ops import Lease

__version__ = "0.1.0"

__all__ = [
    "AlreadyRegistered",
    "ApalisError",
    "ConnectionFailed",
    "DatabaseError",
    "InvalidArgument",
    "Lease",
    "MigrationChecksumMismatch",
    "MigrationReport",
    "Outcome",
    "SchemaError",
    "SchemaReport",
    "StaleAcknowledgement",
    "Worker",
    "WorkerConfig",
    "WorkerNotRegistered",
    "WorkerStats",
    "__version__",
    "migrate",
    "migrate_async",
    "verify_schema",
    "verify_schema_async",
]
