"""The runtime package never imports the code generator (a user's install may not have it)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import apalis_client

PACKAGE = Path(apalis_client.__file__).parent


def test_no_module_of_apalis_client_names_apalis_codegen_in_an_import() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute | ast.Name)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [str(node.args[0].value)]
            offenders += [
                f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', 0)}: {n}"
                for n in names
                if n.split(".")[0] in ("apalis_codegen", "codegen")
            ]
    assert offenders == []


def test_importing_every_module_of_apalis_client_loads_no_codegen() -> None:
    names = sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="apalis_client."))
    assert "apalis_client.cli.ops" in names and "apalis_client.admin" in names
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    if name != 'apalis_client.__main__':\n"
        "        importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('apalis_codegen', 'jinja2')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
