"""The apalis lifecycle statements, read from queries/*.sql so the benchmark stays in sync.

The files name their parameters sqlc-style (``@queue``); psycopg wants ``%(queue)s``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

QUERIES_DIR = Path(__file__).resolve().parent.parent / "queries"

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*:(\w+)\s*$", re.MULTILINE)
# `@name` not preceded by a word character or another `@` (so `a@b` and `@@` are left alone).
_PARAM = re.compile(r"(?<![\w@])@(\w+)")


def to_psycopg(sql: str) -> str:
    """Rewrite sqlc ``@name`` parameters as psycopg ``%(name)s`` ones."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


@cache
def statements(filename: str) -> dict[str, str]:
    """Parse the ``-- name: x :cmd`` blocks of ``queries/<filename>`` into psycopg SQL."""
    text = (QUERIES_DIR / filename).read_text(encoding="utf-8")
    headers = list(_HEADER.finditer(text))
    if not headers:
        raise ValueError(f"no '-- name:' blocks in {QUERIES_DIR / filename}")
    out: dict[str, str] = {}
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        out[m.group(1)] = to_psycopg(text[m.end() : end].strip().rstrip(";"))
    return out


def statement(filename: str, name: str) -> str:
    """One named statement of ``queries/<filename>``, ready for ``cursor.execute(sql, dict)``."""
    found = statements(filename)
    if name not in found:
        raise KeyError(f"queries/{filename} has no statement named {name!r}: {sorted(found)}")
    return found[name]


# Seeding and the latency pushes are not the code under test: one plain unnest INSERT,
# the row shape of a Rust producer's push (Pending, attempts 0, max_attempts 5).
SEED_INSERT = """
INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, priority, metadata)
SELECT t.job, t.id, %(queue)s, 'Pending', 0, 5, 0, '{}'::jsonb
  FROM unnest(%(jobs)s::bytea[], %(ids)s::text[]) AS t(job, id)
"""
