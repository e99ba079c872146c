"""Load named statements (``-- name: x :cmd`` blocks) from the packaged schema folder."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*:(\w+)\s*$", re.MULTILINE)


def schema_dir() -> Path:
    """Return the folder of migration files: packaged in a wheel, the repo's in a checkout."""
    packaged = Path(str(resources.files("apalis_client"))) / "schema"
    if packaged.is_dir():
        return packaged
    # Editable install / source checkout: schema/ sits beside the package.
    return Path(__file__).resolve().parent.parent / "schema"


@cache
def named_statements(filename: str) -> dict[str, bytes]:
    """Parse ``filename`` under the schema folder into {name: statement bytes}."""
    text = (schema_dir() / filename).read_text(encoding="utf-8")
    headers = list(_HEADER.finditer(text))
    out: dict[str, bytes] = {}
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        out[m.group(1)] = text[m.end() : end].strip().rstrip(";").encode()
    return out
