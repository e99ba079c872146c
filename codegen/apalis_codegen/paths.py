"""How the generator names a file in its headers and messages."""

from __future__ import annotations

from pathlib import Path


def shown(path: Path) -> str:
    """``path`` relative to the working directory (as ``python -m codegen`` is run), else as is."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)
