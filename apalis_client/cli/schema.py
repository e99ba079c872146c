"""``migrate``, ``verify`` and ``grants``: set up the apalis schema, check it, print role grants."""

from __future__ import annotations

import argparse
from typing import Any

from apalis_client.cli._common import (
    NO,
    OK,
    USAGE,
    Failure,
    add_database_url,
    add_json,
    connect,
    print_json,
    require_url,
)


def _migrate(args: argparse.Namespace) -> int:
    from apalis_client.migrate import migrate

    with connect(require_url(args)) as conn:
        report = migrate(conn)
        if args.tune_autovacuum:
            from apalis_client.tuning import tune_autovacuum

            tune_autovacuum(conn)
    if args.as_json:
        out: dict[str, Any] = {"applied": report.applied, "reconciled": report.reconciled}
        if args.tune_autovacuum:
            out["autovacuum_tuned"] = True
        print_json(out)
    elif report.applied:
        # A fresh or upgraded schema: the repeatable parts were (re)written with it, so
        # listing them as "reconciled" would only say the same thing again.
        print(f"schema migrated: applied {', '.join(report.applied)}")
    elif report.reconciled:
        print(f"schema repaired: {', '.join(report.reconciled)}")
    else:
        print("schema up to date: nothing to do")
    if args.tune_autovacuum and not args.as_json:
        print(
            "apalis.jobs: autovacuum tuned (vacuum after 10,000 changed rows, unthrottled, "
            "indexes cleaned every time)"
        )
    return OK


def headline(problems: list[str]) -> str:
    """The one line that matters about a schema that is not generation 14."""
    if any(p.startswith("relation apalis.jobs is missing") for p in problems):
        return "no apalis schema in this database: run `apalis-client migrate`"
    return (
        f"schema differs from generation 14 in {len(problems)} way(s): "
        "run `apalis-client migrate` to repair"
    )


def _verify(args: argparse.Namespace) -> int:
    from apalis_client.migrate import verify_schema

    with connect(require_url(args)) as conn:
        report = verify_schema(conn)
    if args.as_json:
        out: dict[str, Any] = {"ok": report.ok, "problems": report.problems}
        if not report.ok:
            out["summary"] = headline(report.problems)
        print_json(out)
    elif report.ok:
        print("schema OK: generation 14, every migration applied")
    else:
        print(headline(report.problems))
        for problem in report.problems:
            print(f"  - {problem}")
    return OK if report.ok else NO


def _database_name(args: argparse.Namespace) -> str | None:
    """--database, else the dbname of --database-url / $DATABASE_URL (parsed, not connected)."""
    if args.database is not None or args.migrator is None:
        return str(args.database) if args.database is not None else None
    if not args.database_url:
        raise Failure(
            "the migrator's grant names the database: pass --database NAME "
            "(or --database-url, whose database is used)",
            USAGE,
        )
    import psycopg

    try:
        dbname = psycopg.conninfo.conninfo_to_dict(args.database_url).get("dbname")
    except psycopg.ProgrammingError as exc:
        raise Failure(f"--database-url is not a PostgreSQL URL: {str(exc).strip()}", USAGE) from exc
    if not dbname:
        raise Failure(
            "the migrator's grant names the database and --database-url names none: "
            "pass --database NAME",
            USAGE,
        )
    return str(dbname)


def _grants(args: argparse.Namespace) -> int:
    from apalis_client.grants import print_grants

    return print_grants(
        producer=args.producer,
        worker=args.worker,
        operator=args.operator,
        migrator=args.migrator,
        database=_database_name(args),
    )


GRANTS_DESCRIPTION = """\
Print the GRANT statements for the roles named, as SQL to review and apply (nothing is
run). Apply the migrator's as a superuser or the database owner, run `apalis-client
migrate` as the migrator, then apply the others as the migrator, e.g.
  apalis-client grants --migrator apalis_owner --database app | psql app
  apalis-client grants --producer web --worker jobs --operator ops | psql -U apalis_owner app
Role names are quoted as identifiers: give them exactly as created."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` and ``verify``."""
    p = sub.add_parser(
        "migrate",
        help="create or upgrade the apalis schema (generation 14) and repair drift",
        description="Create or upgrade the apalis schema to generation 14 and repair drift. "
        "Safe beside Rust services: it takes the Rust setup's advisory lock.",
    )
    add_database_url(p)
    add_json(p)
    p.add_argument(
        "--tune-autovacuum",
        action="store_true",
        help="also set apalis.jobs to vacuum after 10,000 changed rows instead of 20%% of the "
        "table, unthrottled and cleaning its indexes every time (for queues that keep millions "
        "of finished tasks; needs table ownership)",
    )
    p.set_defaults(run=_migrate)
    p = sub.add_parser(
        "verify",
        help="check the schema against generation 14 (exit 1 when it differs)",
        description="Check the apalis schema: the first line says what to do, the rest "
        "names every missing or different object.",
    )
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_verify)
    p = sub.add_parser(
        "grants",
        help="print the least-privilege GRANTs for producer, worker, operator, migrator roles",
        description=GRANTS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for role, does in (
        ("producer", "pushes tasks"),
        ("worker", "claims and acknowledges tasks"),
        ("operator", "runs the read, retry and kill commands"),
        ("migrator", "owns the apalis schema and runs migrate"),
    ):
        p.add_argument(f"--{role}", metavar="ROLE", help=f"the role that {does}")
    p.add_argument(
        "--database",
        metavar="NAME",
        help="the database the migrator may create the schema in (default: --database-url's)",
    )
    add_database_url(p)
    p.set_defaults(run=_grants)
