"""mypy --strict flags a payload of the wrong type for a typed storage or task."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from mypy import api

SNIPPET = textwrap.dedent(
    """
    from typing import Any
    import psycopg
    from pydantic import BaseModel
    from apalis_client import PostgresStorage, Task

    class SendEmail(BaseModel):
        to: str

    def use(conn: psycopg.Connection[Any]) -> None:
        storage = PostgresStorage[SendEmail]("emails")
        storage.push_with_conn(conn, SendEmail(to="a"))
        storage.push_task_with_conn(conn, Task(args=SendEmail(to="a")))
        storage.push_with_conn(conn, {"to": "a"})  # line 14: wrong payload
        storage.push_task_with_conn(conn, Task(args=42))  # line 15: wrong task
    """
)


def test_mypy_flags_a_wrong_payload_type(tmp_path: Path) -> None:
    source = tmp_path / "snippet.py"
    source.write_text(SNIPPET, encoding="utf-8")
    out, err, status = api.run(
        [
            "--strict",
            "--python-version",
            "3.10",
            "--config-file",
            os.devnull,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            str(source),
        ]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1, out + err
    assert [line.split(":")[1] for line in errors] == ["14", "15"], out
