"""mypy --strict flags a payload of the wrong type for a typed storage or task, and a wrong
or renamed parameter on the push statements the producer calls."""

from __future__ import annotations

import os
import shutil
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


def _mypy(tmp_path: Path, *targets: Path, path: Path | None = None) -> tuple[int, list[str]]:
    env_path = os.environ.get("MYPYPATH")
    if path is not None:
        os.environ["MYPYPATH"] = str(path)
    try:
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
                "--explicit-package-bases",
                *map(str, targets),
            ]
        )
    finally:
        if path is not None:
            if env_path is None:
                del os.environ["MYPYPATH"]
            else:
                os.environ["MYPYPATH"] = env_path
    return status, [line for line in (out + err).splitlines() if ": error:" in line]


HOT_PATH_SNIPPET = textwrap.dedent(
    """
    from datetime import datetime, timezone
    from typing import Any
    import psycopg
    from apalis_generated import push
    from apalis_generated.models import PushTaskParams

    def use(conn: psycopg.Connection[Any]) -> None:
        now = datetime.now(timezone.utc)
        good: PushTaskParams = {
            "job": b"1", "id": "01J", "queue": "q", "max_attempts": 5, "run_at": now,
            "priority": 0, "metadata": "{}", "idempotency_key": None,
        }
        push.push_task(conn, **good)
        push.push_task(conn, job=b"1", id="01J", queue="q", max_attempts=5, run_at=now,  # 15
                       priority=0, metadata="{}", idem_key=None)  # a wrong name
        bad: PushTaskParams = {
            "job": b"1", "id": "01J", "queue": "q", "max_attempts": "5", "run_at": now,
            "priority": 0, "metadata": "{}", "idempotency_key": None,
        }  # line 18 (the dict ends): "5" is a wrong type
    """
)


def test_mypy_flags_a_wrong_parameter_name_or_type_on_the_push_statement(tmp_path: Path) -> None:
    source = tmp_path / "hot_path.py"
    source.write_text(HOT_PATH_SNIPPET, encoding="utf-8")
    status, errors = _mypy(tmp_path, source, path=REPO / "generated")
    assert status == 1, errors
    lines = sorted({int(line.split(":")[1]) for line in errors})
    assert lines == [15, 18], errors
    assert any('"idem_key"' in line for line in errors), errors


REPO = Path(__file__).resolve().parent.parent


def test_a_renamed_query_parameter_fails_mypy_on_the_push_path(tmp_path: Path) -> None:
    # A copy of the client and its generated code, with push_task's @idempotency_key renamed
    # to @dedup_key in the generated module, TypedDict included: the push path must not
    # type-check until it follows the rename.
    root = tmp_path / "copy"
    shutil.copytree(REPO / "apalis_client", root / "apalis_client")
    shutil.copytree(REPO / "generated" / "apalis_generated", root / "apalis_generated")
    models = root / "apalis_generated" / "models.py"
    text = models.read_text(encoding="utf-8")
    cls = text.index("class PushTaskParams(")
    end = text.index("\n\n\n", cls)
    models.write_text(
        text[:cls] + text[cls:end].replace("idempotency_key:", "dedup_key:") + text[end:],
        encoding="utf-8",
    )
    for name in ("push.py", "push_async.py"):
        module = root / "apalis_generated" / name
        text = module.read_text(encoding="utf-8")
        fn = text.index("def push_task(")
        end = text.index("\n\n\n", fn)
        body = text[fn:end].replace("idempotency_key:", "dedup_key:")
        body = body.replace('"idempotency_key": idempotency_key', '"idempotency_key": dedup_key')
        module.write_text(text[:fn] + body + text[end:], encoding="utf-8")
    targets = [root / "apalis_client" / m for m in ("_push.py", "producer.py", "producer_async.py")]
    status, errors = _mypy(tmp_path, *targets, path=root)
    assert status == 1, errors
    assert any("_push.py" in line and "idempotency_key" in line for line in errors), errors
