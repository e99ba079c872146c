"""The savepoint commands a push wraps itself in, composed with psycopg.sql as psycopg does.

psycopg's own ``Transaction`` cannot be used for the one-round-trip push: inside a pipeline it
syncs when the block is entered and left, which is exactly the round trips the push avoids.
"""

from __future__ import annotations

from typing import Final

from psycopg import sql

NAME: Final = "apalis_push"


def _command(template: str) -> bytes:
    # Rendered once: composing on every push costs more client CPU than the statement itself.
    return sql.SQL(template).format(sql.Identifier(NAME)).as_bytes(None)


SAVEPOINT: Final = _command("SAVEPOINT {}")
RELEASE: Final = _command("RELEASE SAVEPOINT {}")
ROLLBACK_TO: Final = _command("ROLLBACK TO SAVEPOINT {}")
