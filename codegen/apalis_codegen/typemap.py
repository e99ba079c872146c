"""PostgreSQL types to Python annotations, and how a value crosses in each direction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from apalis_codegen.describe import PgType

_DT = "from datetime import "
_IP = "from ipaddress import "
_RANGE = "from psycopg.types.range import Range"
# typname -> (annotation, import lines)
_SCALARS: dict[str, tuple[str, tuple[str, ...]]] = {
    "text": ("str", ()),
    "varchar": ("str", ()),
    "bpchar": ("str", ()),
    "name": ("str", ()),
    "char": ("str", ()),
    "citext": ("str", ()),
    "unknown": ("str", ()),
    "int2": ("int", ()),
    "int4": ("int", ()),
    "int8": ("int", ()),
    "oid": ("int", ()),
    "bool": ("bool", ()),
    "bytea": ("bytes", ()),
    "float4": ("float", ()),
    "float8": ("float", ()),
    "numeric": ("Decimal", ("from decimal import Decimal",)),
    "timestamptz": ("datetime", (_DT + "datetime",)),
    "timestamp": ("datetime", (_DT + "datetime",)),
    "date": ("date", (_DT + "date",)),
    "time": ("time", (_DT + "time",)),
    "timetz": ("time", (_DT + "time",)),
    "interval": ("timedelta", (_DT + "timedelta",)),
    "uuid": ("UUID", ("from uuid import UUID",)),
    "json": ("JsonValue", ("from pydantic import JsonValue",)),
    "jsonb": ("JsonValue", ("from pydantic import JsonValue",)),
    "inet": ("IPv4Interface | IPv6Interface", (_IP + "IPv4Interface, IPv6Interface",)),
    "cidr": ("IPv4Network | IPv6Network", (_IP + "IPv4Network, IPv6Network",)),
    "int4range": ("Range[int]", (_RANGE,)),
    "int8range": ("Range[int]", (_RANGE,)),
    "numrange": ("Range[Decimal]", (_RANGE, "from decimal import Decimal")),
    "daterange": ("Range[date]", (_RANGE, _DT + "date")),
    "tsrange": ("Range[datetime]", (_RANGE, _DT + "datetime")),
    "tstzrange": ("Range[datetime]", (_RANGE, _DT + "datetime")),
    # Kept in PostgreSQL's text form: psycopg has no built-in loader for these.
    "ltree": ("str", ()),
    "lquery": ("str", ()),
    "bit": ("str", ()),
    "varbit": ("str", ()),
    "xml": ("str", ()),
    "macaddr": ("str", ()),
    "tsvector": ("str", ()),
    "tsquery": ("str", ()),
    "money": ("str", ()),
    "void": ("None", ()),
}
_JSON_WRAPPERS = {"json": "Json", "jsonb": "Jsonb"}
HOW_TO_OVERRIDE = (
    "cast it in the SQL to a mapped type (e.g. ::text), or for a json/jsonb value name a "
    "pydantic model with '-- type: <column or parameter> = <module>.<Model>'"
)


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
    enum: str = ""  # the generated Enum class, for a user enum (or an array of one)
    hstore: bool = False  # decoded from and encoded to hstore's text form
    model: str = ""  # a pydantic model (``-- type:`` override) read from json/jsonb
    composite: bool = False  # a row type, kept in its text form

    def annotation(self, *, nullable: bool = False, nullable_elements: bool = False) -> str:
        """The annotation, e.g. ``list[str | None] | None``."""
        inner = self.element + (" | None" if nullable_elements and self.is_array else "")
        text = f"list[{inner}]" if self.is_array else inner
        if nullable and text != "None":
            text += " | None"
        return text


def python_type(
    oid: int,
    types: dict[int, PgType],
    enums: Mapping[int, str] | None = None,
    model: str = "",
) -> PyType:
    """Map a type oid (arrays, domains, enums, extensions) to its Python type.

    ``enums`` names the generated Enum class of each user enum; ``model`` is a ``-- type:``
    override (a dotted pydantic model path) for a json/jsonb value.
    """
    t = types.get(oid)
    if t is None:
        raise UnmappedType(f"oid {oid}")
    is_array = t.category == "A" and t.element != 0
    if is_array:
        t = types[t.element]
    while t.base:  # a domain: use its base type
        t = types[t.base]
    if model:
        if t.name not in _JSON_WRAPPERS:
            raise UnmappedType(
                f"{t.name} (a '-- type:' override applies to json/jsonb values only)"
            )
        module, _, cls = model.rpartition(".")
        return PyType(
            cls, is_array, (f"from {module} import {cls}",), _JSON_WRAPPERS[t.name], model=cls
        )
    if t.category == "E":
        name = (enums or {}).get(t.oid)
        if name:
            return PyType(name, is_array, (), "", enum=name)
        return PyType("str", is_array, (), "")
    if t.name == "hstore" and not is_array:
        return PyType("dict[str, str | None]", is_array, (), "", hstore=True)
    if t.kind == "c":
        name = "" if is_array else (enums or {}).get(t.oid, "")
        # A standalone composite with a generated model; else (a table's row type, an
        # array of composites) PostgreSQL's text form.
        return PyType(name or "str", is_array, (), "", composite=True, enum="")
    if t.name not in _SCALARS:
        raise UnmappedType(t.name + ("[]" if is_array else ""))
    annotation, imports = _SCALARS[t.name]
    return PyType(annotation, is_array, imports, _JSON_WRAPPERS.get(t.name, ""))
