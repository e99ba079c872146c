"""Migrations: generation-14 shape, upgrade from generation 10, drift, concurrency, errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import Databases, Flavor, Query, run_sql_file

import apalis_client
from apalis_client.cli import main as cli_main

pytestmark = pytest.mark.conformance

# Written out from CONTRACT.md by hand, not read from schema/generation14.json,
# so a wrong expectation file cannot make this test agree with itself.
CONSTRAINTS = {
    "jobs_pkey": "PRIMARY KEY (id)",
    "jobs_status_check": "CHECK ((status = ANY (ARRAY['Pending'::text, 'Queued'::text, "
    "'Running'::text, 'Done'::text, 'Failed'::text, 'Killed'::text])))",
    "jobs_attempts_check": "CHECK ((attempts >= 0))",
    "jobs_max_attempts_check": "CHECK ((max_attempts > 0))",
    "jobs_attempts_lte_max_attempts_check": "CHECK ((attempts <= max_attempts))",
    "jobs_priority_check": "CHECK ((priority >= 0))",
    "jobs_lock_by_worker_type_fkey": "FOREIGN KEY (lock_by, job_type) "
    "REFERENCES apalis.workers(id, worker_type)",
    "jobs_active_owner_check": "CHECK (((status <> ALL (ARRAY['Queued'::text, 'Running'::text])) "
    "OR (lock_by IS NOT NULL)))",
    "jobs_state_shape_check": "CHECK ((((status <> 'Pending'::text) OR ((lock_by IS NULL) AND "
    "(lock_at IS NULL))) AND ((status <> ALL (ARRAY['Queued'::text, 'Running'::text])) OR "
    "((lock_by IS NOT NULL) AND (lock_at IS NOT NULL)))))",
}
P = "ON apalis.jobs USING btree"
INDEXES = {
    "jobs_dequeue_idx": f"CREATE INDEX jobs_dequeue_idx {P} (job_type, priority DESC, run_at, id) "
    "WHERE ((status = ANY (ARRAY['Pending'::text, 'Failed'::text])) AND (attempts < max_attempts))",
    "jobs_list_by_queue_idx": f"CREATE INDEX jobs_list_by_queue_idx {P} "
    "(job_type, status, done_at DESC, run_at DESC, id DESC)",
    "jobs_list_all_idx": f"CREATE INDEX jobs_list_all_idx {P} "
    "(status, done_at DESC, run_at DESC, id DESC)",
    "jobs_locked_by_queue_idx": f"CREATE INDEX jobs_locked_by_queue_idx {P} (job_type, lock_by) "
    "WHERE ((lock_by IS NOT NULL) AND (status = ANY (ARRAY['Running'::text, 'Queued'::text])))",
    "jobs_job_type_lock_by_idx": f"CREATE INDEX jobs_job_type_lock_by_idx {P} (job_type, lock_by) "
    "WHERE (lock_by IS NOT NULL)",
    "jobs_job_type_run_at_idx": f"CREATE INDEX jobs_job_type_run_at_idx {P} (job_type, run_at)",
    "jobs_run_at_idx": f"CREATE INDEX jobs_run_at_idx {P} (run_at)",
    "jobs_job_type_done_at_idx": f"CREATE INDEX jobs_job_type_done_at_idx {P} (job_type, done_at) "
    "WHERE (done_at IS NOT NULL)",
    "idx_jobs_idempotency_key": f"CREATE UNIQUE INDEX idx_jobs_idempotency_key {P} "
    "(job_type, idempotency_key) WHERE (idempotency_key IS NOT NULL)",
    "jobs_pkey": f"CREATE UNIQUE INDEX jobs_pkey {P} (id)",
}


def assert_generation14_shape(url: str, query: Query) -> None:
    constraints: dict[str, str] = dict(
        query(
            url,
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'apalis.jobs'::regclass AND contype <> 'n'",
        )
    )
    assert constraints == CONSTRAINTS
    indexes: dict[str, str] = dict(
        query(
            url,
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indrelid = 'apalis.jobs'::regclass",
        )
    )
    assert {k.removeprefix("apalis."): v for k, v in indexes.items()} == INDEXES
    functions = query(
        url,
        "SELECT proname::text, prosecdef, provolatile::text, proconfig::text[], "
        "pg_get_function_arguments(oid), pg_get_function_result(oid) FROM pg_proc "
        "WHERE pronamespace = 'apalis'::regnamespace ORDER BY 1",
    )
    assert functions == [
        (
            "get_jobs",
            False,
            "v",
            ["search_path=pg_catalog, apalis, pg_temp"],
            "worker_id text, v_job_type text, v_job_count integer DEFAULT 5",
            "SETOF apalis.jobs",
        ),
        ("notify_new_jobs", False, "v", ["search_path=pg_catalog, apalis, pg_temp"], "", "trigger"),
    ]
    triggers = query(
        url,
        "SELECT tgname::text, tgtype, tgenabled::text, tgqual IS NULL, tgnargs, tgnewtable::text "
        "FROM pg_trigger WHERE tgrelid = 'apalis.jobs'::regclass AND NOT tgisinternal",
    )
    assert triggers == [("notify_workers", 4, "O", True, 0, "new_jobs")]
    snapshot = query(
        url,
        "SELECT relkind::text, relispopulated FROM pg_class "
        "WHERE oid = 'apalis.queue_stats_snapshot'::regclass",
    )
    assert snapshot == [("m", False)]


def test_fresh_migrate_creates_exactly_generation_14(
    flavor: Flavor, empty_db: str, query: Query
) -> None:
    report = flavor.migrate(empty_db)
    assert report.applied == ["0001_base.sql", "0002_generation14.sql", "0003_rust_journal.sql"]
    assert_generation14_shape(empty_db, query)
    assert flavor.verify(empty_db).problems == []


def test_second_migrate_is_a_no_op(flavor: Flavor, migrated_db: str) -> None:
    report = flavor.migrate(migrated_db)
    assert (report.applied, report.reconciled) == ([], [])


def test_upgrade_from_rust_generation_10_keeps_and_repairs_rows(
    flavor: Flavor, empty_db: str, query: Query
) -> None:
    run_sql_file(empty_db, "rust_setup_generation10.sql")
    run_sql_file(empty_db, "generation10_rows.sql")
    assert not flavor.verify(empty_db).ok

    flavor.migrate(empty_db)

    assert_generation14_shape(empty_db, query)
    rows = query(
        empty_db,
        "SELECT right(id, 2), status, attempts, lock_by, lock_at IS NULL, "
        "done_at IS NULL FROM apalis.jobs ORDER BY id",
    )
    assert rows == [
        ("01", "Pending", 0, None, True, True),
        ("02", "Queued", 0, "w1", False, True),
        ("03", "Running", 1, "w1", False, True),
        ("04", "Done", 1, "w1", False, False),
        ("05", "Failed", 1, "w1", False, False),
        ("06", "Killed", 5, "w1", False, False),
        ("07", "Pending", 3, None, True, True),  # lost claim: one attempt consumed
        ("08", "Killed", 5, None, True, False),  # lost claim at the limit
        ("09", "Pending", 1, None, True, True),  # stale owner shed
    ]
    assert query(empty_db, "SELECT count(*) FROM public.__diesel_schema_migrations") == [(2,)]


def test_migrate_puts_back_what_the_rust_setup_rewrote(
    flavor: Flavor, migrated_db: str, query: Query
) -> None:
    run_sql_file(migrated_db, "rust_setup_generation10.sql")  # runs cleanly over our schema
    problems = flavor.verify(migrated_db).problems
    assert any("jobs_dequeue_idx differs" in p for p in problems)
    assert any("apalis.get_jobs differs" in p for p in problems)
    assert any("apalis.notify_new_jobs differs" in p for p in problems)

    report = flavor.migrate(migrated_db)

    assert report.applied == []
    assert sorted(report.reconciled) == [
        "repeatable/10_function_get_jobs.sql",
        "repeatable/11_function_notify_new_jobs.sql",
        "repeatable/30_index_jobs_dequeue_idx.sql",
    ]
    assert_generation14_shape(migrated_db, query)


def test_eight_concurrent_migrators_all_succeed(empty_db: str, query: Query) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "apalis_client", "migrate", "--database-url", empty_db],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(8)
    ]
    results = [(p.returncode, p.communicate(timeout=120)[1]) for p in procs]
    results = [(p.returncode, err) for p, (_, err) in zip(procs, results, strict=True)]
    assert [code for code, _ in results] == [0] * 8, results
    assert query(empty_db, "SELECT filename FROM apalis.apalis_client_migrations ORDER BY 1") == [
        ("0001_base.sql",),
        ("0002_generation14.sql",),
        ("0003_rust_journal.sql",),
    ]
    assert_generation14_shape(empty_db, query)


def test_failing_migration_leaves_nothing_behind(
    flavor: Flavor, empty_db: str, query: Query
) -> None:
    # A foreign get_jobs with another return type makes the reconcile step fail
    # after the tables were created in the same transaction.
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA apalis")
        conn.execute(
            "CREATE FUNCTION apalis.get_jobs(worker_id text, v_job_type text, "
            "v_job_count integer DEFAULT 5) RETURNS integer LANGUAGE sql AS 'SELECT 1'"
        )
    with pytest.raises(
        apalis_client.DatabaseError, match="migrate failed: cannot change return type"
    ):
        flavor.migrate(empty_db)
    assert (
        query(
            empty_db,
            "SELECT relname::text FROM pg_class WHERE relnamespace = 'apalis'::regnamespace",
        )
        == []
    )


def test_edited_applied_migration_is_refused(flavor: Flavor, migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE apalis.apalis_client_migrations SET checksum = repeat('0', 64) "
            "WHERE filename = '0002_generation14.sql'"
        )
    with pytest.raises(
        apalis_client.MigrationChecksumMismatch, match=r"0002_generation14\.sql was applied"
    ):
        flavor.migrate(migrated_db)


def test_unknown_apalis_shape_is_refused_by_name(
    flavor: Flavor, empty_db: str, query: Query
) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA apalis")
        conn.execute("CREATE TABLE apalis.jobs (id integer PRIMARY KEY, payload text)")
        conn.execute("CREATE TABLE apalis.workers (id text PRIMARY KEY)")
    with pytest.raises(
        apalis_client.SchemaError, match=r"apalis\.jobs\.id is integer, expected text"
    ):
        flavor.migrate(empty_db)
    assert query(empty_db, "SELECT to_regclass('apalis.apalis_client_migrations')::text") == [
        (None,)
    ]


def test_migrate_inside_a_transaction_is_refused_before_any_sql(migrated_db: str) -> None:
    with psycopg.connect(migrated_db) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(
            apalis_client.InvalidArgument, match=r"outside any transaction.*INTRANS"
        ):
            apalis_client.migrate(conn)


def test_cli_reports_an_unreachable_server_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli_main(["verify", "--database-url", "postgresql://u:secret@127.0.0.1:1/x"])
    err = capsys.readouterr().err
    assert code == 4
    assert "cannot connect to" in err and "port=1" in err
    assert "secret" not in err and "Traceback" not in err


def test_cli_reports_an_unknown_role_without_a_traceback(
    server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = psycopg.conninfo.make_conninfo(server_url, user="no_such_role_apalis", password="wrong")
    code = cli_main(["migrate", "--database-url", url])
    err = capsys.readouterr().err
    assert code == 4
    assert "no_such_role_apalis" in err and "wrong" not in err.replace("no_such_role", "")


def test_cli_verify_names_drift_and_exits_1(
    migrated_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("DROP INDEX apalis.jobs_run_at_idx")
    assert cli_main(["verify", "--database-url", migrated_db]) == 1
    assert "index jobs_run_at_idx is missing" in capsys.readouterr().out


@pytest.fixture
def password_role(server_url: str) -> Iterator[str]:
    """A role that must log in with a password: a scram-sha-256 pg_hba line put first."""
    role = f"apalis_pw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        hba = Path(str(admin.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
        original = hba.read_text()
        admin.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'right-pass'").format(
                psycopg.sql.Identifier(role)
            )
        )
        lines = [f"{kind} all {role} {addr} scram-sha-256" for kind, addr in _HBA_ADDRESSES]
        hba.write_text("\n".join(lines) + "\n" + original)
        admin.execute("SELECT pg_reload_conf()")
    try:
        yield role
    finally:
        hba.write_text(original)
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


_HBA_ADDRESSES = (("local", ""), ("host", "127.0.0.1/32"), ("host", "::1/128"))


def test_cli_reports_a_wrong_password_without_a_traceback(
    server_url: str, password_role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    right = psycopg.conninfo.make_conninfo(
        server_url, user=password_role, password="right-pass", dbname="postgres"
    )
    wrong = psycopg.conninfo.make_conninfo(right, password="wrong-pass")
    deadline = time.monotonic() + 10
    while True:  # the server applies the reloaded pg_hba.conf asynchronously
        code = cli_main(["verify", "--database-url", wrong])
        err = capsys.readouterr().err
        if "password authentication failed" in err or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == 4
    assert f'password authentication failed for user "{password_role}"' in err
    assert "wrong-pass" not in err and "Traceback" not in err
    with psycopg.connect(right) as conn:  # the same role gets in with its real password
        assert conn.execute("SELECT current_user").fetchone() == (password_role,)


# --- coexistence with the Rust crate 0.6 setup ---------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
RUST_JOURNAL_VERSIONS = [
    "00000000000000",
    "20260520000000",
    "20260521000000",
    "20260521000001",
    "20260521000002",
    "20260521000003",
    "20260521000004",
    "20260521000005",
    "20260521000006",
    "20260910000000",
    "20260910000001",
    "20260912000000",
    "20260912000001",
    "20260914000000",
]


def rust06_setup_text() -> str:
    """The Rust-shaped 0.6 setup (tests/fixtures/rust06_setup.sql with its function bodies)."""
    head = (FIXTURES / "rust06_setup.sql").read_text(encoding="utf-8")
    functions = (FIXTURES / "rust06_functions.sql").read_text(encoding="utf-8")
    return head.replace("-- @functions\n", functions)


def rust06_setup(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(rust06_setup_text().encode())


def function_sources(url: str, query: Query) -> dict[str, str]:
    return dict(
        query(
            url,
            "SELECT proname::text, prosrc FROM pg_proc WHERE pronamespace = 'apalis'::regnamespace",
        )
    )


def test_migrate_writes_the_rust_journal_with_every_version_a_rust_06_verify_needs(
    flavor: Flavor, empty_db: str, query: Query
) -> None:
    flavor.migrate(empty_db)
    rows = query(
        empty_db,
        "SELECT version, run_on IS NOT NULL "
        "FROM apalis_diesel_postgres.__diesel_schema_migrations ORDER BY 1",
    )
    assert rows == [(v, True) for v in RUST_JOURNAL_VERSIONS]


def test_migrate_leaves_a_rust_journal_that_has_rows_alone(
    flavor: Flavor, empty_db: str, query: Query
) -> None:
    rust06_setup(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM apalis_diesel_postgres.__diesel_schema_migrations "
            "WHERE version > '20260911'"
        )
    flavor.migrate(empty_db)
    count = "SELECT count(*) FROM apalis_diesel_postgres.__diesel_schema_migrations"
    assert query(empty_db, count) == [(11,)]
    assert any("lacks versions 20260912000000" in p for p in flavor.verify(empty_db).problems)


def test_verify_names_a_missing_rust_journal(flavor: Flavor, migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA apalis_diesel_postgres CASCADE")
    problems = flavor.verify(migrated_db).problems
    assert problems == [
        "the Rust crate's migration journal apalis_diesel_postgres.__diesel_schema_migrations "
        "is missing (a Rust 0.6 verify_schema refuses the database): run `apalis-client migrate`"
    ]


def test_migrate_keeps_the_rust_crates_own_function_bodies(
    flavor: Flavor, migrated_db: str, query: Query
) -> None:
    rust06_setup(migrated_db)  # over our schema: it rewrites both functions with its bodies
    rust_sources = function_sources(migrated_db, query)
    assert flavor.verify(migrated_db).problems == []
    report = flavor.migrate(migrated_db)
    assert (report.applied, report.reconciled) == ([], [])
    assert function_sources(migrated_db, query) == rust_sources


def test_migrate_over_a_rust_06_schema_adds_no_constraint_or_index_again(
    flavor: Flavor, empty_db: str, query: Query
) -> None:
    rust06_setup(empty_db)
    objects = (
        "SELECT conname::text, oid::int8 FROM pg_constraint "
        "WHERE conrelid = 'apalis.jobs'::regclass "
        "UNION ALL SELECT indexrelid::regclass::text, indexrelid::int8 FROM pg_index "
        "WHERE indrelid = 'apalis.jobs'::regclass ORDER BY 1"
    )
    before = query(empty_db, objects)
    report = flavor.migrate(empty_db)
    assert report.reconciled == []
    assert query(empty_db, objects) == before
    assert_generation14_shape(empty_db, query)
    assert flavor.verify(empty_db).problems == []


def test_migrate_accepts_the_earlier_text_of_0002_as_applied(
    flavor: Flavor, migrated_db: str
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE apalis.apalis_client_migrations SET checksum = %s "
            "WHERE filename = '0002_generation14.sql'",
            ("9548b1b2d00ce974a00d6adc15431619fa9b6ec67b160bfc556c25e3c7f96726",),
        )
    assert flavor.migrate(migrated_db).applied == []
    assert flavor.verify(migrated_db).ok


def test_verify_names_an_invalid_index_and_migrate_rebuilds_it(
    flavor: Flavor, migrated_db: str
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        # What a failed CREATE INDEX CONCURRENTLY leaves: the definition prints the same.
        conn.execute(
            "UPDATE pg_index SET indisvalid = false "
            "WHERE indexrelid = 'apalis.jobs_run_at_idx'::regclass"
        )
    problems = flavor.verify(migrated_db).problems
    assert [p for p in problems if "jobs_run_at_idx" in p] == [
        "index jobs_run_at_idx is invalid (a failed CREATE INDEX CONCURRENTLY?); rebuild it"
    ]
    assert flavor.migrate(migrated_db).reconciled == ["repeatable/30_index_jobs_run_at_idx.sql"]
    assert flavor.verify(migrated_db).ok


def test_verify_names_an_unready_index(flavor: Flavor, migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE pg_index SET indisready = false "
            "WHERE indexrelid = 'apalis.jobs_job_type_run_at_idx'::regclass"
        )
    problems = flavor.verify(migrated_db).problems
    assert "index jobs_job_type_run_at_idx is not ready for inserts; rebuild it" in problems


def test_verify_names_a_not_valid_constraint_and_migrate_validates_it(
    flavor: Flavor, migrated_db: str, query: Query
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE apalis.jobs DROP CONSTRAINT jobs_active_owner_check")
        conn.execute(
            "ALTER TABLE apalis.jobs ADD CONSTRAINT jobs_active_owner_check "
            "CHECK (status NOT IN ('Queued', 'Running') OR lock_by IS NOT NULL) NOT VALID"
        )
    problems = flavor.verify(migrated_db).problems
    assert problems == [
        "constraint jobs_active_owner_check is NOT VALID (rows were never checked against it)"
    ]
    report = flavor.migrate(migrated_db)
    assert report.reconciled == ["repeatable/40_constraint_jobs_active_owner_check.sql"]
    assert flavor.verify(migrated_db).ok


def test_verify_names_a_deferrable_constraint(flavor: Flavor, migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE apalis.jobs ALTER CONSTRAINT jobs_lock_by_worker_type_fkey "
            "DEFERRABLE INITIALLY DEFERRED"
        )
    assert flavor.verify(migrated_db).problems == [
        "constraint jobs_lock_by_worker_type_fkey is DEFERRABLE (it must be checked at once)"
    ]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_migrate_gives_up_after_lock_timeout_while_a_rust_setup_holds_its_lock(
    kind: str, migrated_db: str
) -> None:
    with psycopg.connect(migrated_db) as holder:
        holder.execute(
            "SELECT pg_advisory_xact_lock("
            "hashtext('apalis_diesel_postgres'), hashtext('migrations'))"
        )
        started = time.monotonic()
        with pytest.raises(
            apalis_client.DatabaseError,
            match=r"migrate failed: a lock was not granted within lock_timeout=0\.5s: another "
            r"migrator \(a Rust setup\(\) or another apalis-client migrate\)",
        ):
            if kind == "sync":
                with psycopg.connect(migrated_db, autocommit=True) as conn:
                    apalis_client.migrate(conn, lock_timeout=0.5)
            else:

                async def go() -> None:
                    async with await psycopg.AsyncConnection.connect(
                        migrated_db, autocommit=True
                    ) as conn:
                        await apalis_client.migrate_async(conn, lock_timeout=0.5)

                asyncio.run(go())
        assert time.monotonic() - started < 10
        holder.rollback()


def test_migrate_refuses_a_non_positive_lock_timeout_before_any_sql(migrated_db: str) -> None:
    with (
        psycopg.connect(migrated_db, autocommit=True) as conn,
        pytest.raises(apalis_client.InvalidArgument, match="lock_timeout must be positive"),
    ):
        apalis_client.migrate(conn, lock_timeout=0)


def test_python_migrate_and_a_rust_setup_started_together_both_succeed_ten_times(
    databases: Databases, tmp_path: Path, query: Query
) -> None:
    script = tmp_path / "rust06_setup.sql"
    script.write_text(rust06_setup_text(), encoding="utf-8")
    firsts: list[str] = []
    for round_no in range(10):
        url = databases.create()
        migrate = subprocess.Popen(
            [sys.executable, "-m", "apalis_client", "migrate", "--database-url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # Stagger the Rust side across Python's start-up so each goes first in some rounds.
        time.sleep(0.15 * round_no)
        rust = subprocess.run(
            ["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning"},
        )
        _, err = migrate.communicate(timeout=120)
        assert (rust.returncode, rust.stderr) == (0, ""), round_no
        assert (migrate.returncode, err) == (0, b""), round_no
        assert_generation14_shape(url, query)
        with psycopg.connect(url, autocommit=True) as conn:
            assert apalis_client.verify_schema(conn).problems == []
        # Who created the schema went first (for the record: both orders should occur).
        (python_first,) = query(
            url,
            "SELECT n.xmin = m.xmin FROM pg_namespace n, apalis.apalis_client_migrations m "
            "WHERE n.nspname = 'apalis' AND m.filename = '0001_base.sql'",
        )[0]
        firsts.append("python" if python_first else "rust")
    print("first migrator per round:", firsts)
