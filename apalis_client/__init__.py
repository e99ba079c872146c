"""apalis-client: a typed Python client for the apalis job queue on PostgreSQL."""

from apalis_client.errors import (
    ApalisError,
    ConnectionFailed,
    DatabaseError,
    InvalidArgument,
    MigrationChecksumMismatch,
    SchemaError,
)
from apalis_client.migrate import (
    MigrationReport,
    SchemaReport,
    migrate,
    migrate_async,
    verify_schema,
    verify_schema_async,
)

__version__ = "0.1.0"

__all__ = [
    "ApalisError",
    "ConnectionFailed",
    "DatabaseError",
    "InvalidArgument",
    "MigrationChecksumMismatch",
    "MigrationReport",
    "SchemaError",
    "SchemaReport",
    "__version__",
    "migrate",
    "migrate_async",
    "verify_schema",
    "verify_schema_async",
]
