"""The README's main job (examples/demo.py) does what it prints, on a real database."""

from __future__ import annotations

from conftest import Query
from test_push_examples import run_example


def test_demo_commits_rolls_back_handles_a_conflict_and_drains_the_queue(
    empty_db: str, query: Query
) -> None:
    out = run_example("demo.py", empty_db)
    assert out[0] == (
        "migrate: applied ['0001_base.sql', '0002_generation14.sql', '0003_rust_journal.sql']"
    )
    assert out[1] == "verify: generation 14, OK"
    assert out[3].startswith("2. rolled back (payment declined)")
    assert out[4].startswith("3. idempotency conflict handled")
    assert out[6] == "worker: 1 done, 1 killed, 0 failed; stopped once the queue was idle"
    rows = query(
        empty_db,
        "SELECT status, attempts, last_result->>'Err' IS NOT NULL FROM apalis.jobs ORDER BY status",
    )
    assert rows == [("Done", 1, False), ("Killed", 1, True)]
    assert query(empty_db, "SELECT count(*) FROM demo_orders") == [(2,)]
