"""Read an sqlc config (``sqlc.yaml`` / ``sqlc.json``, version 1 or 2) into generator jobs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apalis_codegen.names import NameError_, identifier
from apalis_codegen.parse import QueryFileError


@dataclass(frozen=True)
class Package:
    """One PostgreSQL package an sqlc config names: where its SQL is and where code goes."""

    name: str  # the Python package
    queries: tuple[Path, ...]
    schema: tuple[Path, ...]
    out: Path  # the package folder's parent
    overrides: dict[str, str] = field(default_factory=dict)  # "table.column" -> Model


@dataclass(frozen=True)
class Config:
    """The packages of a config, and what was left out (other engines)."""

    packages: tuple[Package, ...]
    skipped: tuple[str, ...]


def load(path: Path, shown: str) -> Config:
    """Parse the config at ``path``; every problem is a ``file:line`` QueryFileError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise QueryFileError(f"{shown}: cannot read the sqlc config ({exc.strerror})") from exc
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QueryFileError(f"{shown}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    else:
        data = _yaml(text, shown)
    if not isinstance(data, dict):
        raise QueryFileError(f"{shown}:1: an sqlc config is a mapping with a 'version' key")
    version = str(data.get("version", "")).strip()
    root = path.parent
    if version == "1":
        entries = data.get("packages") or []
        return _collect(entries, root, shown, version)
    if version == "2":
        return _collect(data.get("sql") or [], root, shown, version)
    raise QueryFileError(f"{shown}:1: sqlc config version {version!r}; this reads '1' and '2'")


def _paths(value: Any, root: Path, what: str, shown: str) -> tuple[Path, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise QueryFileError(f"{shown}: {what} must be a path or a list of paths")
    return tuple(root / v for v in items)


def _collect(entries: Any, root: Path, shown: str, version: str) -> Config:
    if not isinstance(entries, list):
        key = "packages" if version == "1" else "sql"
        raise QueryFileError(f"{shown}: '{key}' must be a list")
    packages: list[Package] = []
    skipped: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise QueryFileError(f"{shown}: entry {i + 1} is not a mapping")
        engine = str(entry.get("engine", "postgresql"))
        label = str(entry.get("name") or entry.get("path") or f"entry {i + 1}")
        if engine != "postgresql":
            skipped.append(f"{label} (engine {engine})")
            continue
        overrides = _overrides(entry)
        if version == "1":
            out_dir = str(entry.get("path") or ".")
            name = str(entry.get("name") or Path(out_dir).name)
        else:
            out_dir, name = "", ""
            gens = entry.get("gen") or {}
            for gen in gens.values() if isinstance(gens, dict) else []:
                if isinstance(gen, dict):
                    out_dir = out_dir or str(gen.get("out") or "")
                    name = name or str(gen.get("package") or "")
                    overrides.update(_overrides(gen))
            for plugin in entry.get("codegen") or []:
                if isinstance(plugin, dict):
                    out_dir = out_dir or str(plugin.get("out") or "")
                    options = plugin.get("options") or {}
                    if isinstance(options, dict):
                        name = name or str(options.get("package") or "")
            out_dir = out_dir or "."
            name = name or str(entry.get("name") or Path(out_dir).name or "db")
        try:
            package = identifier(name)
        except NameError_ as exc:
            raise QueryFileError(f"{shown}: package name {exc}") from exc
        packages.append(
            Package(
                name=package,
                queries=_paths(entry.get("queries"), root, f"{label}: 'queries'", shown),
                schema=_paths(entry.get("schema"), root, f"{label}: 'schema'", shown),
                out=root / out_dir,
                overrides=overrides,
            )
        )
    return Config(tuple(packages), tuple(skipped))


def _overrides(entry: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in entry.get("overrides") or []:
        if isinstance(item, dict) and item.get("column") and item.get("py_type"):
            out[str(item["column"])] = str(item["py_type"])
    return out


# ---- a small YAML reader: block mappings and lists, flow lists, scalars -------------------


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_scalar(v) for v in inner.split(",")] if inner else []
    if text == "{}":
        return {}
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~", ""):
        return None
    return text


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


_KEY = re.compile(r"^(?P<key>[^:\s][^:]*?|\"[^\"]*\"|'[^']*')\s*:(?:\s+(?P<value>.*)|$)")


def _yaml(text: str, shown: str) -> Any:
    lines: list[tuple[int, str, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise QueryFileError(f"{shown}:{number}: YAML indentation must use spaces")
        line = _strip_comment(raw)
        if line.strip() and line.strip() != "---":
            lines.append((len(line) - len(line.lstrip()), line.strip(), number))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if i >= len(lines):
            return None, i
        if lines[i][1].startswith("- ") or lines[i][1] == "-":
            items: list[Any] = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1][:1] == "-":
                content = lines[i][1][1:].strip()
                if not content:
                    value, i = block(i + 1, lines[i + 1][0] if i + 1 < len(lines) else indent)
                    items.append(value)
                    continue
                # "- key: value" opens a mapping whose keys sit two columns in.
                inner = indent + (len(lines[i][1]) - len(content))
                lines[i] = (inner, content, lines[i][2])
                if _KEY.match(content):
                    value, i = block(i, inner)
                else:
                    value, i = _scalar(content), i + 1
                items.append(value)
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            _, content, number = lines[i]
            m = _KEY.match(content)
            if not m:
                raise QueryFileError(f"{shown}:{number}: cannot read {content!r} as 'key: value'")
            key = str(_scalar(m.group("key")))
            value = m.group("value")
            if value is not None and value.strip() not in ("|", ">"):
                mapping[key] = _scalar(value)
                i += 1
            elif i + 1 < len(lines) and lines[i + 1][0] > indent:
                mapping[key], i = block(i + 1, lines[i + 1][0])
            elif i + 1 < len(lines) and lines[i + 1][0] == indent and lines[i + 1][1][:1] == "-":
                mapping[key], i = block(i + 1, indent)
            else:
                mapping[key] = None
                i += 1
        if i < len(lines) and lines[i][0] > indent:
            raise QueryFileError(f"{shown}:{lines[i][2]}: unexpected indentation")
        return mapping, i

    if not lines:
        return {}
    value, i = block(0, lines[0][0])
    if i < len(lines):
        raise QueryFileError(f"{shown}:{lines[i][2]}: unexpected indentation")
    return value
