"""The savepoint commands a push wraps itself in, composed with psycopg.sql as psycopg does.

psycopg's own ``Transaction`` cannot be used for the one-round-trip push: inside a pipeline it
syncs when the block is entered and left, which is exactly the round trips the push avoids.
"""

from __future__ import annotations

from typing import Final

from psycopg import sql

NAME: Final = "apalis_push"
SAVEPOINT: Final = sql.SQL("SAVEPOINT {}").format(sql.Identifier(NAME))
RELEASE: Final = sql.SQL("RELEASE SAVEPOINT {}").format(sql.Identifier(NAME))
ROLLBACK_TO: Final = sql.SQL("ROLLBACK TO SAVEPOINT {}").format(sql.Identifier(NAME))
