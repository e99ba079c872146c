"""PostgreSQL types to Python annotations, and how a parameter value is adapted."""

from __future__ import annotations

from dataclasses import dataclass

from apalis_codegen.describe import PgType

# typname -> (annotation, import line or "")
_SCALARS: dict[str, tuple[str, str]] = {
    "text": ("str", ""),
    "varchar": ("str", ""),
    "bpchar": ("str", ""),
    "name": ("str", ""),
    "char": ("str", ""),
    "citext": ("str", ""),
    "int2": ("int", ""),
    "int4": ("int", ""),
    "int8": ("int", ""),
    "oid": ("int", ""),
    "bool": ("bool", ""),
    "bytea": ("bytes", ""),
    "float4": ("float", ""),
    "float8": ("float", ""),
    "numeric": ("Decimal", "from decimal import Decimal"),
    "timestamptz": ("datetime", "from datetime import datetime"),
    "timestamp": ("datetime", "from datetime import datetime"),
    "date": ("date", "from datetime import date"),
    "time": ("time", "from datetime import time"),
    "interval": ("timedelta", "from datetime import timedelta"),
    "uuid": ("UUID", "from uuid import UUID"),
    "json": ("JsonValue", "from pydantic import JsonValue"),
    "jsonb": ("JsonValue", "from pydantic import JsonValue"),
}
_JSON_WRAPPERS = {"json": "Json", "jsonb": "Jsonb"}


class UnmappedType(Exception):
    """The generator has no Python type for a PostgreSQL type."""

    def __init__(self, typname: str) -> None:
        super().__init__(typname)
        self.typname = typname


@dataclass(frozen=True)
class PyType:
    """The Python side of one PostgreSQL type."""

    element: str  # annotation of the scalar (or of an array's element)
    is_array: bool
    imports: tuple[str, ...]
    wrapper: str  # "Json"/"Jsonb" when values must be wrapped for psycopg, else ""

    def annotation(self, *, nullable: bool = False, nullable_elements: bool = False) -> str:
        """The annotation, e.g. ``list[str | None] | None``."""
        inner = self.element + (" | None" if nullable_elements and self.is_array else "")
        text = f"list[{inner}]" if self.is_array else inner
        return text + (" | None" if nullable else "")


def python_type(oid: int, types: dict[int, PgType]) -> PyType:
    """Map a type oid (arrays, domains and enums included) to its Python type."""
    t = types.get(oid)
    if t is None:
        raise UnmappedType(f"oid {oid}")
    is_array = t.category == "A" and t.element != 0
    if is_array:
        t = types[t.element]
    while t.base:  # a domain: use its base type
        t = types[t.base]
    if t.category == "E":  # enum labels come back as text
        return PyType("str", is_array, (), "")
    if t.name not in _SCALARS:
        raise UnmappedType(t.name + ("[]" if is_array else ""))
    annotation, imp = _SCALARS[t.name]
    return PyType(annotation, is_array, (imp,) if imp else (), _JSON_WRAPPERS.get(t.name, ""))
