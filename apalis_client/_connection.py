"""The worker's own connections: autocommit, and a refused connect said as ConnectionFailed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from apalis_client.errors import ConnectionFailed


async def connect(
    conninfo: str, kwargs: Mapping[str, Any] | None = None
) -> psycopg.AsyncConnection[Any]:
    """Open an autocommit connection to ``conninfo`` with the user's ``connect_kwargs``.

    libpq gives no SQLSTATE at connect time, so the first line of its message is what a
    :class:`ConnectionFailed` can say.
    """
    try:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True, **(kwargs or {}))
    except psycopg.OperationalError as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConnectionFailed("connect", line) from exc
