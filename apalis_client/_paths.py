"""Where the migration files live: packaged in a wheel, or the repo's schema/ folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def schema_dir() -> Path:
    """Return the folder of migration files: packaged in a wheel, the repo's in a checkout."""
    packaged = Path(str(resources.files("apalis_client"))) / "schema"
    if packaged.is_dir():
        return packaged
    # Editable install / source checkout: schema/ sits beside the package.
    return Path(__file__).resolve().parent.parent / "schema"
