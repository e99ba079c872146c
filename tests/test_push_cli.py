"""The ``apalis-client push`` command on real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import Query
from ulid import ULID

from apalis_client.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_push_prints_the_id_of_the_stored_task(
    migrated_db: str, capsys: pytest.CaptureFixture[str], query: Query
) -> None:
    code, out, _ = run(
        capsys,
        "push",
        "emails",
        "--json",
        '{"to": "zoë@x", "n": 1.0}',
        "--database-url",
        migrated_db,
    )
    task_id = out.strip()
    assert code == 0 and str(ULID.from_str(task_id)) == task_id
    rows = query(migrated_db, "SELECT id, job_type, job, max_attempts, priority FROM apalis.jobs")
    assert rows == [(task_id, "emails", '{"to":"zoë@x","n":1.0}'.encode(), 5, 0)]


def test_push_sets_every_option(
    migrated_db: str, capsys: pytest.CaptureFixture[str], query: Query
) -> None:
    code, out, _ = run(
        capsys,
        "push",
        "q",
        "--json",
        '"x"',
        "--run-at",
        "2030-01-02T03:04:05Z",
        "--priority",
        "7",
        "--max-attempts",
        "2",
        "--idempotency-key",
        "k1",
        "--metadata",
        '{"by": "ops"}',
        "--database-url",
        migrated_db,
    )
    assert code == 0
    rows = query(
        migrated_db,
        "SELECT id, run_at, priority, max_attempts, idempotency_key, metadata FROM apalis.jobs",
    )
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert rows == [(out.strip(), when, 7, 2, "k1", {"by": "ops"})]


def test_push_accepts_unix_seconds_for_run_at(
    migrated_db: str, capsys: pytest.CaptureFixture[str], query: Query
) -> None:
    code, _, _ = run(
        capsys, "push", "q", "--json", "1", "--run-at", "1900000000", "--database-url", migrated_db
    )
    assert code == 0
    assert query(migrated_db, "SELECT extract(epoch FROM run_at)::bigint FROM apalis.jobs") == [
        (1900000000,)
    ]


def test_second_push_with_the_same_key_fails_with_status_2(
    migrated_db: str, capsys: pytest.CaptureFixture[str], query: Query
) -> None:
    argv = ("push", "q", "--json", "{}", "--idempotency-key", "once", "--database-url", migrated_db)
    assert run(capsys, *argv)[0] == 0
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert "idempotency conflict on queue 'q'" in err and "'once'" in err
    assert query(migrated_db, "SELECT count(*) FROM apalis.jobs") == [(1,)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--json", "{nope"], "--json is not valid JSON"),
        (["--json", "NaN"], "NaN is not JSON"),
        (["--json", "1", "--metadata", "[1]"], "--metadata must be a JSON object"),
        (["--json", "1", "--run-at", "tomorrow"], "neither unix seconds nor an ISO 8601"),
        (["--json", "1", "--run-at", "2030-01-01T00:00:00"], "has no UTC offset"),
        (["--json", "1", "--priority", "-1"], "priority -1 is out of range"),
    ],
)
def test_bad_input_is_refused_with_nothing_written(
    migrated_db: str,
    capsys: pytest.CaptureFixture[str],
    query: Query,
    extra: list[str],
    message: str,
) -> None:
    code, out, err = run(capsys, "push", "q", *extra, "--database-url", migrated_db)
    assert (code, out) == (2, "")
    assert message in err
    assert query(migrated_db, "SELECT count(*) FROM apalis.jobs") == [(0,)]


def test_push_reads_the_payload_from_a_file(
    migrated_db: str, capsys: pytest.CaptureFixture[str], query: Query, tmp_path: Path
) -> None:
    big = {"blob": "x" * 200_000}  # past what a shell passes as one argument
    (tmp_path / "task.json").write_text(json.dumps(big), encoding="utf-8")
    code, out, err = run(
        capsys, "push", "q", "--json", f"@{tmp_path / 'task.json'}", "--database-url", migrated_db
    )
    assert (code, err) == (0, "")
    assert query(migrated_db, "SELECT id, length(job) FROM apalis.jobs") == [
        (out.strip(), len(json.dumps(big, separators=(",", ":"))))
    ]


def test_push_of_a_missing_file_names_it(
    migrated_db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.json"
    code, out, err = run(
        capsys, "push", "q", "--json", f"@{missing}", "--database-url", migrated_db
    )
    assert (code, out) == (2, "")
    assert err == (
        f"apalis-client push: error: --json @{missing}: cannot read '{missing}': "
        "No such file or directory\n"
    )


def test_push_reads_the_payload_from_stdin(migrated_db: str, query: Query) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apalis_client", "push", "q", "--json", "-"],
        input='{"from": "stdin"}',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DATABASE_URL": migrated_db},
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert query(migrated_db, "SELECT id, job FROM apalis.jobs") == [
        (done.stdout.strip(), b'{"from":"stdin"}')
    ]


def test_push_runs_as_the_installed_command(migrated_db: str, query: Query) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "apalis_client",
            "push",
            "q",
            "--json",
            "[1]",
            "--database-url",
            migrated_db,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert query(migrated_db, "SELECT id FROM apalis.jobs") == [(done.stdout.strip(),)]
