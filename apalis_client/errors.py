"""The exception hierarchy every apalis_client error belongs to."""

from __future__ import annotations


class ApalisError(Exception):
    """Base class of every error raised by apalis_client."""


class InvalidArgument(ApalisError, ValueError):
    """A value the caller passed is outside what the contract allows."""


class DatabaseError(ApalisError):
    """A database operation failed; the psycopg error is chained as ``__cause__``."""

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(f"{operation} failed: {message}")
        self.operation = operation


class ConnectionFailed(DatabaseError):
    """The server could not be reached or refused the credentials."""


class SchemaError(ApalisError):
    """The apalis schema is missing, drifted, or in a shape this client does not know."""


class MigrationChecksumMismatch(SchemaError):
    """An already applied migration file was edited afterwards."""

    def __init__(self, filename: str, recorded: str, current: str) -> None:
        super().__init__(
            f"migration {filename} was applied with checksum {recorded[:12]}… but the file "
            f"now hashes to {current[:12]}…; applied migrations must not be edited "
            "(add a new migration file instead)"
        )
        self.filename = filename
