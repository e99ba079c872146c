"""Task log lines: failures with id, queue, attempt n/max and traceback; a debug line per task."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from apalis_client.tasklog import log_failure, log_finished


@dataclass(frozen=True)
class Ref:
    id: str = "01JTASK"
    job_type: str = "emails"
    attempts: int = 1
    max_attempts: int = 5


def smtp_down() -> None:
    raise ConnectionError("smtp down")


def test_a_failure_names_task_queue_attempt_retry_and_carries_the_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        smtp_down()
    except ConnectionError as exc:
        error = exc
    with caplog.at_level(logging.ERROR, logger="apalis_client.worker"):
        log_failure(Ref(), error, "ConnectionError: smtp down", retry_in=4.0)
    (record,) = caplog.records
    assert record.getMessage() == (
        "task 01JTASK on queue emails failed (attempt 2/5, retry in 4.0s): "
        "ConnectionError: smtp down"
    )
    assert record.levelno == logging.ERROR
    assert "in smtp_down" in caplog.text  # the traceback's frame
    assert record.exc_info is not None and record.exc_info[1] is error


def test_the_last_failed_attempt_says_the_task_is_killed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="apalis_client.worker"):
        log_failure(Ref(attempts=4), None, "task timed out", retry_in=8.0)
    (record,) = caplog.records
    assert "(attempt 5/5, no attempts left, killed): task timed out" in record.getMessage()
    assert record.exc_info is None


def test_a_finished_task_gets_one_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="apalis_client.worker"):
        log_finished(Ref(attempts=0), "Done", 0.0123)
    assert [r.getMessage() for r in caplog.records] == [
        "task 01JTASK on queue emails Done (attempt 1/5) in 12.3ms"
    ]
    assert caplog.records[0].levelno == logging.DEBUG


def test_no_finish_line_is_built_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="apalis_client.worker"):
        log_finished(Ref(), "Done", 0.5)
    assert caplog.records == []
