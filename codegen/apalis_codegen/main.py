"""The generator's command line: generate, or ``--check`` that the committed output is fresh."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from apalis_codegen import unasync
from apalis_codegen.describe import apply_schema, describe, schema_files
from apalis_codegen.parse import QueryFileError, Statement, parse_file
from apalis_codegen.paths import shown as _shown
from apalis_codegen.pgfind import scratch_database
from apalis_codegen.render import (
    HEADER_MARK,
    TEMPLATES,
    build,
    input_hash,
    render,
    template_files,
)

# The package whose hand-written *_async.py modules get generated *_sync.py twins.
CLIENT = Path("apalis_client")
_DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.MULTILINE)


@dataclass(frozen=True)
class Options:
    """Where the generator reads and writes."""

    queries: Path
    schema: Path
    out: Path
    package: str
    database_url: str | None = None
    templates: Path = TEMPLATES
    client: Path = CLIENT

    @property
    def package_dir(self) -> Path:
        """The folder the generated modules go to."""
        return self.out / self.package

    def command(self) -> str:
        """The command line that regenerates with these options."""
        return (
            f"python -m codegen --queries {self.queries} --schema {self.schema} "
            f"--out {self.out} --package {self.package}"
            + ("" if self.templates == TEMPLATES else f" --templates {self.templates}")
            + ("" if self.client == CLIENT else f" --client {self.client}")
        )


def query_files(options: Options) -> list[Path]:
    """The query files, in a stable order."""
    if not options.queries.is_dir():
        raise QueryFileError(f"{options.queries}: no such query folder")
    return sorted(p for p in options.queries.glob("*.sql") if p.is_file())


def digest(options: Options) -> str:
    """The hash of every input: query files, schema files, templates, generator version."""
    inputs: list[tuple[str, bytes]] = []
    for p in query_files(options):
        inputs.append((f"queries/{p.name}", p.read_bytes()))
    for p in schema_files(options.schema):
        inputs.append((f"schema/{p.relative_to(options.schema).as_posix()}", p.read_bytes()))
    for p in template_files(options.templates):
        inputs.append((f"templates/{p.name}", p.read_bytes()))
    return input_hash(inputs, options.package)


def expected_files(options: Options) -> list[str]:
    """Names of the modules a generation writes (without running it)."""
    names = ["__init__.py", "_runtime.py", "models.py"]
    for p in query_files(options):
        names += [f"{p.stem}.py", f"{p.stem}_async.py"]
    return names


def parse_all(options: Options) -> tuple[list[Statement], dict[Path, str], dict[Path, str]]:
    """Parse every query file; query names must be unique across files."""
    statements: list[Statement] = []
    display: dict[Path, str] = {}
    stems: dict[Path, str] = {}
    first_seen: dict[str, str] = {}
    for path in query_files(options):
        shown = _shown(path)
        display[path] = shown
        stems[path] = path.stem
        if not path.stem.isidentifier():
            raise QueryFileError(f"{shown}: file name must be a Python identifier")
        for st in parse_file(path, shown):
            here = f"{shown}:{st.line}"
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


def generate(options: Options) -> dict[str, str]:
    """Run the whole pipeline and return the files it would write (nothing written)."""
    statements, display, stems = parse_all(options)
    files = schema_files(options.schema)
    with (
        _server(options) as server_url,
        scratch_database(server_url) as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        apply_schema(conn, files, options.schema)
        catalog = describe(conn, statements, display)
    models, modules = build(catalog, display, stems)
    return render(
        models,
        modules,
        package=options.package,
        digest=digest(options),
        schema_source=_shown(options.schema),
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


def check_offline(options: Options) -> list[str]:
    """Stale files found by comparing recorded input hashes; needs no database."""
    want = digest(options)
    on_disk = _generated_on_disk(options)
    problems = []
    for name in expected_files(options):
        path = options.package_dir / name
        if name not in on_disk:
            problems.append(f"{_shown(path)}: missing")
            continue
        m = _DIGEST_LINE.search(on_disk[name])
        if not m or m.group(1) != want:
            problems.append(f"{_shown(path)}: stale (its inputs changed since it was generated)")
    for name in sorted(set(on_disk) - set(expected_files(options))):
        problems.append(f"{_shown(options.package_dir / name)}: generated, but its source is gone")
    return problems


def check_online(options: Options) -> list[str]:
    """Regenerate in memory and diff against what is on disk."""
    files = generate(options)
    on_disk = _generated_on_disk(options)
    diffs = []
    for name in sorted(set(files) | set(on_disk)):
        old = on_disk.get(name, "").splitlines(keepends=True)
        new = files.get(name, "").splitlines(keepends=True)
        if old != new:
            shown = _shown(options.package_dir / name)
            diffs.append("".join(difflib.unified_diff(old, new, shown, f"{shown} (regenerated)")))
    return diffs


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m codegen",
        description="Compile named SQL statements into typed sync + async Python functions.",
    )
    parser.add_argument("--queries", type=Path, default=Path("queries"), help="query folder")
    parser.add_argument("--schema", type=Path, default=Path("schema"), help="schema folder")
    parser.add_argument("--out", type=Path, default=Path("generated"), help="output root")
    parser.add_argument("--package", default="apalis_generated", help="generated package name")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("APALIS_CODEGEN_DATABASE_URL"),
        help="server to create the scratch database on (default: the test finder chain)",
    )
    parser.add_argument(
        "--templates",
        type=Path,
        default=TEMPLATES,
        help="jinja2 template folder (default: the generator's own)",
    )
    parser.add_argument(
        "--client",
        type=Path,
        default=CLIENT,
        help="package whose *_async.py modules get a generated *_sync.py twin",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the generated code is stale (offline hash check; with --database-url "
        "also regenerate in memory and print a diff)",
    )
    args = parser.parse_args(argv)
    options = Options(
        args.queries,
        args.schema,
        args.out,
        args.package,
        args.database_url,
        args.templates,
        args.client,
    )
    try:
        if args.check:
            problems = check_offline(options) + unasync.check(options.client)
            diffs = check_online(options) if options.database_url else []
            if problems or diffs:
                for line in problems:
                    print(line, file=sys.stderr)
                for diff in diffs:
                    sys.stderr.write(diff)
                print(f"generated code is stale; fix it with: {options.command()}", file=sys.stderr)
                return 1
            print(
                f"generated code in {_shown(options.package_dir)} and the sync twins in "
                f"{_shown(options.client)} are up to date"
            )
            return 0
        changes = write(options, generate(options)) + unasync.write(options.client)
        for line in changes or ["nothing changed"]:
            print(line)
        return 0
    except (QueryFileError, unasync.UnasyncError) as exc:
        print(f"codegen: {exc}", file=sys.stderr)
        return 2
