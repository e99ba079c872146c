"""codegen's unasync writing a sync twin at the public module name (``x_async.py`` -> ``x.py``)."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest

from tools import unasync

REPO = Path(__file__).resolve().parent.parent
UNASYNC = Path(__file__).resolve().parent / "golden" / "unasync"


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    """A package holding the public-named golden source."""
    path = tmp_path / "pkg"
    path.mkdir()
    shutil.copy(UNASYNC / "widgets_async.py", path / "widgets_async.py")
    return path


def test_public_twin_matches_its_golden_copy(in_repo: None) -> None:
    source = UNASYNC / "widgets_async.py"
    assert unasync.target_for(source) == UNASYNC / "widgets.py"
    produced = unasync.to_sync(
        source.read_text(), source, UNASYNC / "widgets.py", "tests/golden/unasync/widgets_async.py"
    )
    expected = (UNASYNC / "widgets.py").read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), produced.splitlines(True)))
    assert not diff, f"widgets.py differs from its golden copy:\n{diff}"


def test_a_public_source_gets_its_twin_at_the_public_name(pkg: Path) -> None:
    assert unasync.write(pkg) == [f"wrote {pkg / 'widgets.py'}"]
    assert not (pkg / "widgets_sync.py").exists()
    assert unasync.check(pkg) == []


def test_a_hand_written_module_at_the_public_name_is_never_overwritten(pkg: Path) -> None:
    facade = pkg / "widgets.py"
    facade.write_text('"""A hand-written facade."""\n')
    with pytest.raises(unasync.UnasyncError, match=r"widgets\.py is written by hand"):
        unasync.write(pkg)
    assert facade.read_text() == '"""A hand-written facade."""\n'


def test_switching_a_module_to_the_public_name_moves_its_twin(pkg: Path) -> None:
    source = pkg / "widgets_async.py"
    source.write_text(source.read_text().replace("# unasync: public\n", ""))
    assert unasync.write(pkg) == [f"wrote {pkg / 'widgets_sync.py'}"]
    source.write_text(
        source.read_text().replace("from __future__", "# unasync: public\n\nfrom __future__")
    )
    (problem, *_) = unasync.check(pkg)
    assert "widgets.py: missing" in problem
    assert any("widgets_sync.py: generated, but" in p for p in unasync.check(pkg))
    assert unasync.write(pkg) == [
        f"wrote {pkg / 'widgets.py'}",
        f"removed {pkg / 'widgets_sync.py'} ({source} writes elsewhere)",
    ]
    assert unasync.check(pkg) == []


def test_renaming_resorts_a_twins_dunder_all(tmp_path: Path, in_repo: None) -> None:
    source = (
        '"""Widgets."""\n\n__all__ = ["ack_and_claim_async", "ack_async"]\n\n\n'
        "async def ack_async() -> None:\n"
        '    """Ack."""\n\n\n'
        "async def ack_and_claim_async() -> None:\n"
        '    """Ack and claim."""\n'
    )
    twin = unasync.to_sync(source, tmp_path / "w_async.py", tmp_path / "w.py", "w_async.py")
    assert '__all__ = ["ack", "ack_and_claim"]' in twin


def test_the_client_modules_are_their_public_twins(in_repo: None) -> None:
    client = Path("apalis_client")
    public = {"producer", "storage", "migrate", "admin", "worker_ops"}
    targets = {unasync.target_for(src).name for src in unasync.sources(client)}
    assert {f"{name}.py" for name in public} <= targets  # the real modules, no facade
    assert not any((client / f"{name}_sync.py").exists() for name in public)
    assert unasync.check(client) == []
