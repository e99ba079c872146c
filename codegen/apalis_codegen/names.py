"""The one naming rule: any SQL name to a valid, non-colliding Python name, or a refusal."""

from __future__ import annotations

import keyword
import re

# Attributes every pydantic (v2) model has besides the ``model_*`` ones; a field of one of
# these names breaks the class or warns. Listed, not read from pydantic: `--check` stays fast.
PYDANTIC_RESERVED = frozenset(
    {
        "copy",
        "dict",
        "json",
        "construct",
        "from_orm",
        "parse_obj",
        "parse_raw",
        "parse_file",
        "schema",
        "schema_json",
        "validate",
        "update_forward_refs",
    }
)
# Names the generated modules import or use; a function, class or constant of one of these
# names would shadow it.
MODULE_RESERVED = frozenset(
    {
        "Any",
        "Final",
        "Enum",
        "Row",
        "Json",
        "Jsonb",
        "JsonValue",
        "Decimal",
        "UUID",
        "datetime",
        "date",
        "time",
        "timedelta",
        "psycopg",
        "Range",
        "IPv4Interface",
        "IPv6Interface",
        "IPv4Network",
        "IPv6Network",
        "Iterable",
        "Sequence",
        "annotations",
        "model_rows",
        "embed_rows",
        "list",
        "dict",
        "str",
        "int",
        "float",
        "bool",
        "bytes",
        "object",
        "type",
        "tuple",
        "set",
        "len",
        "isinstance",
        "super",
    }
)
# Parameters share the signature with these.
PARAM_RESERVED = frozenset({"conn", "params", "cur"})


class NameError_(Exception):
    """A SQL name has no Python name under the rule; the message says why."""


def snake(name: str) -> str:
    """``GetAuthor`` -> ``get_author``, ``UpdateBookISBN`` -> ``update_book_isbn``."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return s.lower()


def camel(name: str) -> str:
    """``claim_next`` -> ``ClaimNext``; ``GetAuthor`` stays; hyphens and spaces split words."""
    parts = re.split(r"[^A-Za-z0-9]+|_", name)
    return "".join(p[:1].upper() + p[1:] for p in parts if p)


def identifier(sql_name: str, *, reserved: frozenset[str] = frozenset()) -> str:
    """The Python identifier for ``sql_name``: invalid characters become ``_``, a leading
    digit gets a prefix, and a keyword or reserved name gets a trailing ``_``.

    Raises NameError_ when nothing usable is left (``"--"``, ``""``).
    """
    text = re.sub(r"\W+", "_", sql_name, flags=re.ASCII).strip("_")
    if not text:
        raise NameError_(f"{sql_name!r} has no letters or digits to build a Python name from")
    if text[0].isdigit():
        text = f"n{text}"
    if keyword.iskeyword(text) or text in reserved:
        text += "_"
    return text


def field_name(sql_name: str) -> str:
    """A model field name: an identifier pydantic accepts (no leading ``_``, not a BaseModel
    attribute; ``model_*`` names get a trailing ``_`` as the attributes live there)."""
    text = identifier(sql_name)
    if text.startswith("model_") or text in PYDANTIC_RESERVED:
        text += "_"
    return text


def enum_member(label: str, index: int) -> str:
    """An enum label as a member name: ``op!en`` -> ``OP_EN``; nothing usable -> ``VALUE_<i>``."""
    try:
        text = identifier(label).upper()
    except NameError_:
        return f"VALUE_{index}"
    if text.startswith("_") or text in ("NAME", "VALUE"):
        text = f"V{text}"
    return text


class Names:
    """A namespace handing out names; a second SQL name mapping to a taken one is refused."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.owners: dict[str, str] = {}

    def claim(self, python: str, owner: str) -> str:
        """Reserve ``python`` for ``owner`` (a description); raises NameError_ if taken."""
        if python in self.owners and self.owners[python] != owner:
            raise NameError_(
                f"{owner} and {self.owners[python]} both become the {self.what} {python!r}; "
                "rename one of them"
            )
        self.owners[python] = owner
        return python
