"""Turn described statements into Python modules through the jinja2 templates."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from apalis_codegen.describe import Catalog, Column, Described, PgType, Table
from apalis_codegen.names import (
    MODULE_RESERVED,
    PARAM_RESERVED,
    NameError_,
    Names,
    camel,
    enum_member,
    field_name,
    identifier,
    snake,
)
from apalis_codegen.parse import QueryFileError, Statement, masked
from apalis_codegen.paths import GENERATOR, HEADER_MARK, TEMPLATES, input_hash, template_files
from apalis_codegen.typemap import HOW_TO_OVERRIDE, PyType, UnmappedType, python_type

__all__ = [
    "GENERATOR",
    "HEADER_MARK",
    "TEMPLATES",
    "build",
    "input_hash",
    "render",
    "template_files",
]
RESERVED_MODULES = frozenset({"__init__", "_runtime", "models"})
BATCH_COMMANDS = ("batchexec", "batchone", "batchmany", "copyfrom")
_HELPERS = frozenset(
    {"ExecResult", "embed_rows", "enum_array", "enum_list", "enum_value", "hstore_dict"}
    | {"hstore_text", "Iterable", "ClassVar", "Callable", "dataclass", "composite"}
    | {"record_text", "text_loader"}
)


@dataclass
class Field:
    """One field of a generated pydantic model."""

    name: str
    annotation: str
    imports: tuple[str, ...] = ()
    column: str = ""  # the result column's name, when it differs from ``name``
    decoder: str = ""  # expression of the function decoding the loaded value


@dataclass
class Model:
    """A generated pydantic model: a table's or one statement's own ``<Name>Row``."""

    name: str
    doc: str
    fields: list[Field]
    kind: str = "row"  # "row", "enum", "params" (a batch's dataclass) or "typeddict"
    members: list[tuple[str, str]] = field(default_factory=list)  # enum: (member, label)

    @property
    def doc_lines(self) -> list[str]:
        """The docstring, re-flowed to fit the line length (COMMENT ON text can be long)."""
        return _wrap_doc(self.doc, self.name)

    @property
    def columns(self) -> dict[str, str]:
        """Result column -> field, for the columns whose field is renamed."""
        return {f.column: f.name for f in self.fields if f.column and f.column != f.name}

    @property
    def decoders(self) -> dict[str, str]:
        """Field -> decoder expression."""
        return {f.name: f.decoder for f in self.fields if f.decoder}


@dataclass
class Param:
    """A keyword-only parameter of a generated function."""

    name: str
    annotation: str
    value: str  # the expression passed to psycopg
    sql_name: str = ""
    imports: tuple[str, ...] = ()


@dataclass
class Prepared:
    """A statement's server-side prepared forms (``-- prepare: server``)."""

    name: str  # the statement's name on the server
    prepare_sql: str  # PREPARE name AS <the statement with $n placeholders>
    execute_sql: str  # EXECUTE name(%(param)s, ...): for a client-side-bound message


@dataclass
class Function:
    """One generated function (rendered twice: sync and async)."""

    name: str
    command: str
    doc_lines: list[str]
    sql_const: str
    sql: str
    params: list[Param]
    model: str | None
    returns: str
    prepared: Prepared | None = None
    params_class: str = ""  # batch and copy commands take an iterable of these
    copy_sql: str = ""  # :copyfrom: the COPY ... FROM STDIN statement
    copy_values: list[str] = field(default_factory=list)  # :copyfrom: one row's values
    factory: str = ""  # the row factory constant


@dataclass
class QueryModule:
    """A query file and everything rendered from it."""

    stem: str
    source: str
    functions: list[Function] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    wrappers: set[str] = field(default_factory=set)
    factories: dict[str, str] = field(default_factory=dict)  # constant -> expression


def singular(word: str) -> str:
    """``jobs`` -> ``job``, ``cities`` -> ``city``, ``statuses`` -> ``status``; ``campus`` stays."""
    low = word.lower()
    if low.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    if low.endswith(("sses", "shes", "ches", "xes", "zes", "uses")):
        return word[:-2]
    if low.endswith(("ss", "us", "is")) or len(word) < 2:
        return word
    if low.endswith("s"):
        return word[:-1]
    return word


def table_model_name(table: Table) -> str:
    """``jobs`` -> ``Job``: the singular of a plural table name, in CamelCase."""
    return camel(singular(table.name))


def rows_const(model: str) -> str:
    """``ClaimNextRow`` -> ``_CLAIM_NEXT_ROWS``: the module constant holding its row factory."""
    return f"_{snake(model.removesuffix('Row')).upper()}_ROWS"


def _environment(templates: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    env.filters["rows_const"] = rows_const
    env.filters["pyrepr"] = _pyrepr
    env.globals["from_import"] = from_import
    return env


def _pyrepr(value: object) -> str:
    # Double quotes, as ruff format writes them.
    text = repr(value)
    if isinstance(value, str) and text.startswith("'") and '"' not in value:
        text = '"' + text[1:-1].replace("\\'", "'") + '"'
    return text


def _wrap_doc(doc: str, fallback: str) -> list[str]:
    # Query comments are re-flowed so the docstring fits the line length.
    text = doc or fallback
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    out: list[str] = []
    for i, paragraph in enumerate(paragraphs):
        if i:
            out.append("")
        out.extend(textwrap.wrap(paragraph, width=88, break_on_hyphens=False) or [""])
    out = [line.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') for line in out]
    if out[-1].endswith('"'):  # a quote just before the closing quotes would end the string
        out[-1] = out[-1][:-1] + '\\"'
    return out


class _Builder:
    """Naming, typing and model building shared by every statement of one run."""

    def __init__(self, catalog: Catalog, schema_source: str, overrides: Mapping[str, str]) -> None:
        self.catalog = catalog
        self.schema_source = schema_source
        self.overrides = overrides  # "table.column" or "schema.table.column" -> Model
        self.classes = Names("class name")
        for reserved in MODULE_RESERVED | _HELPERS:
            self.classes.claim(reserved, "a name the generated code imports")
        self.enums: dict[int, str] = {}
        self.models: list[Model] = []
        self.table_models: dict[int, str] = {}
        self.table_errors: dict[int, str] = {}
        self.used_enums: set[int] = set()

    # ---- types

    def enum_models(self) -> None:
        """Name every user enum and standalone composite type (models are made if used)."""
        for t in sorted(self.catalog.types.values(), key=lambda t: (t.schema, t.name)):
            if t.schema in ("pg_catalog", "information_schema"):
                continue
            if t.kind == "e" or (t.kind == "c" and t.attributes):
                what = "enum" if t.kind == "e" else "composite type"
                owner = f"{what} {t.schema}.{t.name}"
                self.enums[t.oid] = self._class(camel(t.name), owner, self.schema_source)

    def composite_models(self) -> list[Model]:
        """Models of the composite types a statement or table uses, each after those it uses."""
        done: dict[int, Model] = {}
        order: list[Model] = []

        def visit(oid: int) -> None:
            if oid in done:
                return
            t = self.catalog.types[oid]
            fields = []
            deps: list[int] = []
            for name, typid in t.attributes:
                what = f"{self.schema_source}: composite type {t.schema}.{t.name}, field {name!r}"
                py = self.pytype(typid, what)
                f = self.field_for(name, py, True, what)
                f.decoder = ""  # the composite's own decoder converts every field
                fields.append(f)
                deps += [d for d in self._composites_in(typid) if d != oid]
            doc = t.comment or f"A value of the PostgreSQL composite type ``{t.schema}.{t.name}``."
            done[oid] = Model(self.enums[oid], doc, fields)
            for d in deps:
                visit(d)
            order.append(done[oid])

        while True:
            todo = [o for o in self.used_enums if self.catalog.types[o].kind == "c"]
            todo = [o for o in todo if o not in done]
            if not todo:
                break
            for oid in sorted(todo, key=lambda o: self.enums[o]):
                visit(oid)
        # visit() appends a model after its dependencies were visited from it; a model used
        # by another must come first in the module, so order by dependency depth.
        return sorted(order, key=lambda m: self._depth(m.name))

    def _composites_in(self, oid: int) -> list[int]:
        t = self.catalog.types.get(oid)
        while t is not None and (t.base or (t.category == "A" and t.element)):
            t = self.catalog.types.get(t.base or t.element)
        return [t.oid] if t is not None and t.kind == "c" and t.oid in self.enums else []

    def _depth(self, name: str) -> int:
        oid = next(o for o, n in self.enums.items() if n == name)
        inner = [
            d for _, typid in self.catalog.types[oid].attributes for d in self._composites_in(typid)
        ]
        return 1 + max((self._depth(self.enums[d]) for d in inner if d != oid), default=0)

    def text_decoder(self, oid: int) -> str:
        """An expression turning one field of a composite's text form into its Python value."""
        py = python_type(oid, self.catalog.types, self.enums)
        if py.enum:
            return f"enum_list({py.enum})" if py.is_array else py.enum
        if py.composite and py.element != "str":
            return self.composite_decoder(oid)
        if py.hstore:
            return "hstore_dict"
        t = self.catalog.types[oid]
        base = t
        while base.base:
            base = self.catalog.types[base.base]
        if py.element == "str" and not py.is_array:
            return "str"
        return f"text_loader({base.oid})"

    def composite_decoder(self, oid: int) -> str:
        """``composite(Model, [field decoders])`` for a composite type."""
        t = self.catalog.types[oid]
        while t.base:
            t = self.catalog.types[t.base]
        parts = ", ".join(self.text_decoder(typid) for _, typid in t.attributes)
        return f"composite({self.enums[t.oid]}, [{parts}])"

    def enum_model(self, t: PgType) -> Model:
        members = Names("enum member")
        out = []
        for i, label in enumerate(t.labels):
            member = enum_member(label, i)
            while member in members.owners:
                member += "_"
            members.claim(member, repr(label))
            out.append((member, label))
        doc = t.comment or f"Labels of the PostgreSQL enum ``{t.schema}.{t.name}``."
        return Model(self.enums[t.oid], doc, [], kind="enum", members=out)

    def pytype(self, oid: int, what: str, model: str = "") -> PyType:
        """The Python type of ``oid``; an unmapped type is an error naming ``what`` uses it."""
        try:
            py = python_type(oid, self.catalog.types, self.enums, model)
        except UnmappedType as exc:
            raise QueryFileError(
                f"{what}: type {exc.typname} has no Python mapping; {HOW_TO_OVERRIDE}"
            ) from exc
        t = self.catalog.types.get(oid)
        if t is not None and t.category == "A":
            t = self.catalog.types.get(t.element)
        while t is not None and t.base:
            t = self.catalog.types.get(t.base)
        if t is not None and t.oid in self.enums:
            self.used_enums.add(t.oid)
        return py

    def _class(self, wanted: str, owner: str, where: str) -> str:
        try:
            return self.classes.claim(identifier(wanted), owner)
        except NameError_ as exc:
            raise QueryFileError(f"{where}: {exc}") from exc

    # ---- models

    def field_for(self, column: str, py: PyType, nullable: bool, where: str) -> Field:
        try:
            name = field_name(column)
        except NameError_ as exc:
            raise QueryFileError(f"{where}: column {column!r}: {exc}; alias it") from exc
        decoder = ""
        if py.composite and py.element != "str":
            decoder = self.composite_decoder(
                next(o for o, n in self.enums.items() if n == py.element)
            )
        elif py.enum:
            decoder = f"enum_list({py.enum})" if py.is_array else py.enum
        elif py.hstore:
            decoder = "hstore_dict"
        elif py.model:
            decoder = (
                f"lambda v: [{py.model}.model_validate(x) for x in v]"
                if py.is_array
                else f"{py.model}.model_validate"
            )
        return Field(name, py.annotation(nullable=nullable), py.imports, column, decoder)

    def table_models_build(self) -> None:
        for table in self.catalog.tables.values():
            owner = f"table {table.schema}.{table.name}"
            names = [
                table_model_name(table),
                camel(table.name),
                camel(f"{table.schema}_{table.name}"),
            ]
            chosen = ""
            for wanted in names:
                try:
                    chosen = self.classes.claim(identifier(wanted), owner)
                    break
                except NameError_:
                    continue
            if not chosen:
                raise QueryFileError(
                    f"{self.schema_source}: {owner} has no free class name "
                    f"(tried {', '.join(names)})"
                )
            fields: list[Field] = []
            seen = Names("field")
            try:
                for c in table.columns:
                    what = f"{self.schema_source}: {owner}, column {c.name!r}"
                    model = self._override(table, c.name)
                    py = self.pytype(c.type_oid, what, model)
                    f = self.field_for(c.name, py, not c.not_null, what)
                    seen.claim(f.name, f"column {c.name!r}")
                    fields.append(f)
            except (QueryFileError, NameError_) as exc:
                # A table no statement returns may hold a type without a mapping.
                self.table_errors[table.oid] = str(exc)
                self.classes.owners.pop(chosen, None)
                continue
            self.table_models[table.oid] = chosen
            doc = self.catalog.table_comments.get(table.oid) or (
                f"A row of ``{table.schema}.{table.name}``."
            )
            self.models.append(Model(chosen, doc, fields))

    def _override(self, table: Table, column: str) -> str:
        return self.overrides.get(f"{table.schema}.{table.name}.{column}") or self.overrides.get(
            f"{table.name}.{column}", ""
        )

    def embed_model(self, d: Described, where: str) -> tuple[Model, list[tuple[str, str]]]:
        """The row of a statement using ``sqlc.embed``: each embed is one nested table model."""
        st = d.statement
        cols = d.columns
        layout: list[tuple[str, str]] = []  # (field, table model or "")
        fields: list[Field] = []
        seen = Names("field")
        i = 0
        embeds = list(st.embeds)
        while i < len(cols):
            run = self._table_run(cols, i) if embeds else None
            if run is not None:
                target = embeds.pop(0)
                model = self.table_models.get(run.oid)
                if model is None:
                    raise QueryFileError(
                        f"{where}: query {st.name!r}: {self.table_errors.get(run.oid, '')}"
                    )
                f = Field(field_name(target.split(".")[-1]), model)
                i += len(run.columns)
                layout.append((f.name, model))
            else:
                c = cols[i]
                what = f"{where}: query {st.name!r}, column {c.name!r}"
                py = self.pytype(c.type_oid, what, st.type_overrides.get(c.name, ""))
                nullable = (not c.not_null or c.name in st.nullable_columns) and (
                    c.name not in st.not_null_columns
                )
                f = self.field_for(c.name, py, nullable, what)
                i += 1
                layout.append((f.name, ""))
            try:
                seen.claim(f.name, "an embedded table" if layout[-1][1] else f"column {f.name!r}")
            except NameError_ as exc:
                raise QueryFileError(f"{where}: query {st.name!r}: {exc}") from exc
            fields.append(f)
        if embeds:
            raise QueryFileError(
                f"{where}: query {st.name!r}: sqlc.embed({embeds[0]}) matched no run of a "
                "table's columns in the result"
            )
        name = self._class(f"{camel(st.name)}Row", f"the row of query {st.name!r}", where)
        return Model(name, f"A row of ``{st.name}``.", fields), layout

    def _table_run(self, cols: Sequence[Column], i: int) -> Table | None:
        table = self.catalog.tables.get(cols[i].table_oid)
        if table is None or cols[i].attnum != table.columns[0].attnum:
            return None
        want = [(c.table_oid, c.attnum) for c in table.columns]
        got = [(c.table_oid, c.attnum) for c in cols[i : i + len(want)]]
        return table if got == want else None

    def column_model(self, d: Described, where: str) -> tuple[str, Model | None]:
        st = d.statement
        names = [c.name for c in d.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise QueryFileError(
                f"{where}: query {st.name!r} returns column(s) {', '.join(duplicates)} more "
                "than once; rows map by column name, so alias them apart"
            )
        overrides = st.not_null_columns | st.nullable_columns
        unknown = sorted((overrides | set(st.type_overrides)) - set(names) - set(st.params))
        if unknown:
            raise QueryFileError(
                f"{where}: column override(s) {', '.join(unknown)} name no result column of "
                f"query {st.name!r} (columns: {', '.join(names)})"
            )
        nullable = [
            (not c.not_null or c.name in st.nullable_columns) and c.name not in st.not_null_columns
            for c in d.columns
        ]
        if not (overrides or set(st.type_overrides) & set(names)):
            table = self._same_as_table(d.columns, nullable)
            # A table whose model could not be built: the columns report their own error.
            if table is not None and table.oid in self.table_models:
                return self.table_models[table.oid], None
        fields = []
        seen = Names("field")
        for c, null in zip(d.columns, nullable, strict=True):
            what = f"{where}: query {st.name!r}, column {c.name!r}"
            py = self.pytype(c.type_oid, what, st.type_overrides.get(c.name, ""))
            f = self.field_for(c.name, py, null, what)
            try:
                seen.claim(f.name, f"column {c.name!r}")
            except NameError_ as exc:
                raise QueryFileError(f"{where}: query {st.name!r}: {exc}") from exc
            fields.append(f)
        name = self._class(f"{camel(st.name)}Row", f"the row of query {st.name!r}", where)
        return name, Model(name, f"A row of ``{st.name}``.", fields)

    def _same_as_table(self, columns: Sequence[Column], nullable: Sequence[bool]) -> Table | None:
        # "Returns exactly a table's columns", in table order: by the source column the
        # server reports, or else (through a CTE, say) by name, type and nullability.
        catalog = self.catalog
        table = catalog.tables.get(columns[0].table_oid) if columns else None
        if table is not None and [(c.table_oid, c.attnum) for c in columns] == [
            (c.table_oid, c.attnum) for c in table.columns
        ]:
            return table
        shape = [(c.name, c.type_oid, not n) for c, n in zip(columns, nullable, strict=True)]
        for candidate in catalog.tables.values():
            if [(c.name, c.type_oid, c.not_null) for c in candidate.columns] == shape:
                return candidate
        return None


def _param_value(py: PyType, ref: str, wrappers: set[str]) -> str:
    """The expression handing parameter ``ref`` to psycopg; None always stays SQL NULL."""
    if py.enum:
        return f"enum_array({ref})" if py.is_array else f"enum_value({ref})"
    if py.hstore:
        return f"hstore_text({ref})"
    if py.composite and py.element != "str":
        return f"record_text({ref})"
    if py.wrapper:
        wrappers.add(py.wrapper)
        inner = 'v.model_dump(mode="json")' if py.model else "v"
        if py.is_array:
            each = f"None if v is None else {py.wrapper}({inner})"
            return f"None if {ref} is None else [{each} for v in {ref}]"
        if py.model:
            dumped = f'{py.wrapper}({ref}.model_dump(mode="json"))'
            return f"None if {ref} is None else {dumped}"
        return f"None if {ref} is None else {py.wrapper}({ref})"
    return ref


_COPY_SHAPE = re.compile(
    r"^\s*INSERT\s+INTO\s+(?P<table>[\w.\"]+)\s*\((?P<cols>[^()]*)\)\s*VALUES\s*"
    r"\((?P<vals>[^()]*)\)\s*$",
    re.IGNORECASE | re.DOTALL,
)


def _copy_plan(st: Statement, where: str) -> tuple[str, list[str]]:
    """COPY statement and value order for a :copyfrom INSERT."""
    numbered = st.numbered()
    m = _COPY_SHAPE.match(masked(numbered))
    vals = [v.strip() for v in m.group("vals").split(",")] if m else []
    order = []
    for v in vals:
        p = re.fullmatch(r"\$(\d+)(?:\s*::\s*[\w.]+(?:\[\])?)?", v)
        if not p:
            m = None
            break
        order.append(st.params[int(p.group(1)) - 1])
    if not m:
        raise QueryFileError(
            f"{where}: query {st.name!r} is :copyfrom, which needs the shape "
            "'INSERT INTO table (col, ...) VALUES ($1, ...)' with one parameter per column"
        )
    table = numbered[m.start("table") : m.end("table")]
    cols = ", ".join(c.strip() for c in numbered[m.start("cols") : m.end("cols")].split(","))
    return f"COPY {table} ({cols}) FROM STDIN", order


def build(
    catalog: Catalog,
    display: dict[Path, str],
    stems: dict[Path, str],
    *,
    schema_source: str = "schema",
    overrides: Mapping[str, str] | None = None,
) -> tuple[list[Model], list[QueryModule]]:
    """Build the models and per-file function lists from the described statements."""
    b = _Builder(catalog, schema_source, overrides or {})
    b.enum_models()
    b.table_models_build()
    row_models: list[Model] = []
    params_models: list[Model] = []
    modules: dict[Path, QueryModule] = {}
    module_names: dict[Path, Names] = {}
    for d in catalog.described:
        st = d.statement
        where = f"{display.get(st.file, str(st.file))}:{st.line}"
        module = modules.setdefault(st.file, QueryModule(stems[st.file], display[st.file]))
        names = module_names.setdefault(st.file, Names("function name"))
        header = f"{display.get(st.file, str(st.file))}:{st.header_line or st.line}"
        try:
            fn_name = names.claim(
                identifier(snake(st.name), reserved=MODULE_RESERVED | _HELPERS),
                f"query {st.name!r} ({header})",
            )
        except NameError_ as exc:
            raise QueryFileError(f"{header}: {exc}") from exc
        batch = st.command in BATCH_COMMANDS
        ref = "p.{}" if batch else "{}"
        params = []
        param_names = Names("parameter")
        for sql_name, oid in zip(st.params, d.param_types, strict=True):
            what = f"{where}: query {st.name!r}, parameter {st.shown_param(sql_name)}"
            py = b.pytype(oid, what, st.type_overrides.get(sql_name, ""))
            try:
                name = param_names.claim(
                    identifier(sql_name, reserved=MODULE_RESERVED | PARAM_RESERVED | _HELPERS),
                    f"parameter {sql_name!r}",
                )
            except NameError_ as exc:
                raise QueryFileError(f"{what}: {exc}") from exc
            nullable = sql_name in st.nullable_params
            annotation = py.annotation(
                nullable=nullable, nullable_elements=sql_name in st.nullable_elements
            )
            if not batch:  # a batch's parameter types are in its params class
                module.imports.update(py.imports)
                if py.enum or (py.composite and py.element != "str"):
                    module.models.add(py.element)
            value = _param_value(py, ref.format(name), module.wrappers)
            params.append(Param(name, annotation, value, sql_name, py.imports))
        rename = {p.sql_name: p.name for p in params}

        params_class = ""
        if batch:
            if not params:
                raise QueryFileError(
                    f"{where}: query {st.name!r} is :{st.command} but takes no parameters"
                )
            params_class = b._class(
                f"{camel(st.name)}Params", f"the parameters of query {st.name!r}", where
            )
            params_models.append(
                Model(
                    params_class,
                    f"One set of parameters of ``{st.name}``.",
                    [Field(p.name, p.annotation, p.imports) for p in params],
                    kind="params",
                )
            )
            module.models.add(params_class)
        elif params:
            # The keyword arguments as one typed value, for callers that build them apart
            # from the call (``f(conn, **params)``): mypy checks each key against the query.
            params_models.append(
                Model(
                    b._class(
                        f"{camel(st.name)}Params", f"the parameters of query {st.name!r}", where
                    ),
                    f"The parameters of ``{st.name}``, as its keyword arguments.",
                    [Field(p.name, p.annotation, p.imports) for p in params],
                    kind="typeddict",
                )
            )

        model_name: str | None = None
        if st.command in ("one", "many", "batchone", "batchmany"):
            if not d.columns:
                raise QueryFileError(
                    f"{where}: query {st.name!r} is :{st.command} but returns no columns; "
                    "use :exec or :execrows"
                )
            if st.embeds:
                embedded, layout = b.embed_model(d, where)
                model_name = embedded.name
                row_models.append(embedded)
                module.models.update(m for _, m in layout if m)
                parts = ", ".join(f'("{f}", {m or "None"})' for f, m in layout)
                module.factories[rows_const(model_name)] = f"embed_rows({model_name}, [{parts}])"
            else:
                model_name, model = b.column_model(d, where)
                if model is not None:
                    row_models.append(model)
                module.factories[rows_const(model_name)] = f"model_rows({model_name})"
            module.models.add(model_name)
        returns = {
            "one": f"{model_name} | None",
            "many": f"list[{model_name}]",
            "exec": "None",
            "execrows": "int",
            "execresult": "ExecResult",
            "copyfrom": "int",
            "batchexec": "None",
            "batchone": f"list[{model_name} | None]",
            "batchmany": f"list[list[{model_name}]]",
        }[st.command]
        copy_sql, copy_values = "", []
        if st.command == "copyfrom":
            copy_sql, order = _copy_plan(st, where)
            by_sql = {p.sql_name: p for p in params}
            copy_values = [by_sql[s].value for s in order]
        sql_text = st.pyformat(rename)
        if '"""' in sql_text:
            raise QueryFileError(f'{where}: query {st.name!r} contains \'"""\'')
        module.functions.append(
            Function(
                name=fn_name,
                command=st.command,
                doc_lines=_wrap_doc(st.doc, f"Run the ``{st.name}`` query."),
                sql_const=f"{fn_name.upper()}_SQL",
                sql=sql_text.replace("\\", "\\\\"),
                params=params,
                model=model_name,
                returns=returns,
                prepared=_prepared(st, rename) if st.server_prepared else None,
                params_class=params_class,
                copy_sql=copy_sql.replace("\\", "\\\\"),
                copy_values=copy_values,
                factory=rows_const(model_name) if model_name else "",
            )
        )
    composites = b.composite_models()
    enum_models = [
        b.enum_model(catalog.types[oid])
        for oid in sorted(b.enums, key=lambda o: b.enums[o])
        if oid in b.used_enums and catalog.types[oid].kind == "e"
    ]
    models = enum_models + composites + b.models + row_models + params_models
    return models, list(modules.values())


def _prepared(st: Statement, rename: Mapping[str, str]) -> Prepared:
    name = st.prepared_name()
    args = ", ".join(f"%({rename.get(p, p)})s" for p in st.params)
    if args:
        lines = textwrap.wrap(args, width=92, break_on_hyphens=False)
        args = "(\n" + "".join(f"    {line}\n" for line in lines) + ")"
    return Prepared(
        name=name,
        prepare_sql=f"PREPARE {name} AS\n{st.numbered()}".replace("\\", "\\\\"),
        execute_sql=f"EXECUTE {name}{args}",
    )


_STDLIB = {"collections.abc", "dataclasses", "datetime", "decimal", "enum", "ipaddress"} | {
    "typing",
    "uuid",
}


def _import_block(lines: set[str]) -> dict[str, list[str]]:
    # Ruff's isort order: stdlib, third party, first party; names merged per module.
    by_module: dict[str, set[str]] = {}
    for line in lines:
        module, _, names = line.removeprefix("from ").partition(" import ")
        by_module.setdefault(module, set()).update(n.strip() for n in names.split(","))
    out: dict[str, list[str]] = {"stdlib": [], "third": []}
    for module in sorted(by_module):
        ordered = sorted(by_module[module], key=import_order)
        group = "stdlib" if module in _STDLIB else "third"
        out[group].append(from_import(module, ordered))
    return out


def import_order(name: str) -> tuple[int, str, str]:
    """Ruff's order of names in one import: CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name.lower(), name


def from_import(module: str, names: Sequence[str]) -> str:
    """A ``from x import a, b`` line, exploded one name per line as ruff formats long ones."""
    line = f"from {module} import {', '.join(names)}"
    if len(line) <= 100:
        return line
    return f"from {module} import (\n" + "".join(f"    {n},\n" for n in names) + ")"


def _model_imports(models: Sequence[Model]) -> set[str]:
    out = {imp for model in models for f in model.fields for imp in f.imports}
    if any(m.kind == "enum" for m in models):
        out.add("from enum import Enum")
    if any(m.kind == "params" for m in models):
        out.add("from dataclasses import dataclass")
    if any(m.kind == "typeddict" for m in models):
        out.add("from typing import TypedDict")
    if any(m.columns or m.decoders for m in models):
        out.add("from typing import Any, ClassVar")
        out.add("from collections.abc import Callable")
    return out


def _runtime_names(models: Sequence[Model]) -> list[str]:
    used = {"Row"}
    for m in models:
        for decoder in m.decoders.values():
            used.update(
                n for n in ("enum_list", "hstore_dict", "composite", "text_loader") if n in decoder
            )
    return sorted(used, key=import_order)


def render(
    models: Sequence[Model],
    modules: Sequence[QueryModule],
    *,
    package: str,
    digest: str | Mapping[str, str],
    schema_source: str,
    templates: Path = TEMPLATES,
) -> dict[str, str]:
    """Render every output file: {file name inside the package: text}.

    ``digest`` is one input hash for every file, or one per output file name.
    """
    env = _environment(templates)

    def header(name: str) -> dict[str, str]:
        value = digest if isinstance(digest, str) else digest[name]
        return {
            "generator": GENERATOR,
            "digest": value,
            "schema_source": schema_source,
            "package": package,
        }

    files: dict[str, str] = {}
    files["__init__.py"] = env.get_template("init.py.j2").render(
        **header("__init__.py"), source="every query file", modules=[m.stem for m in modules]
    )
    files["_runtime.py"] = env.get_template("runtime.py.j2").render(
        **header("_runtime.py"), source="-"
    )
    model_imports = _import_block(_model_imports(models))
    files["models.py"] = env.get_template("models.py.j2").render(
        **header("models.py"),
        source="the schema tables and every query file",
        models=models,
        imports=model_imports,
        runtime_names=_runtime_names(models),
    )
    query = env.get_template("queries.py.j2")
    for module in modules:
        if module.stem in RESERVED_MODULES:
            raise QueryFileError(
                f"{module.source}:1: a query file may not be named {module.stem}.sql "
                "(the generator writes that module itself)"
            )
        imports = set(module.imports)
        imports.add("from typing import Any, Final")
        runtime = set(module.wrappers)
        for expr in module.factories.values():
            runtime.add(expr.partition("(")[0])
        for f in module.functions:
            if f.params_class:
                imports.add("from collections.abc import Iterable")
            if f.command == "execresult":
                runtime.add("ExecResult")
            for p in f.params:
                runtime.update(
                    n
                    for n in ("enum_array", "enum_value", "hstore_text", "record_text")
                    if f"{n}(" in p.value
                )
        for is_async in (False, True):
            name = f"{module.stem}_async.py" if is_async else f"{module.stem}.py"
            files[name] = query.render(
                **header(name),
                source=module.source,
                module=module,
                is_async=is_async,
                imports=_import_block(imports),
                runtime=sorted(runtime, key=import_order),
                row_models=sorted(module.models, key=import_order),
                factories=sorted(module.factories.items()),
            )
    return files
